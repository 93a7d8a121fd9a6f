//! Host adapters: Docker (bollard), netlink (veths, links, addresses) and DNS messages (hickory-proto); they may use `model` only.
pub mod dns;
pub mod docker;
pub mod link_watch;
pub mod netlink;
pub mod overlay;
pub mod packet;
pub mod rtnl;
