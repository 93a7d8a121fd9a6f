//! Host adapters: Docker (bollard), netlink (veths, links, addresses), DNS messages (hickory-proto) and files in a container's root; they may use `model` only.
pub mod dns;
pub mod docker;
pub mod link_watch;
pub mod netlink;
pub mod overlay;
pub mod packet;
pub mod rtnl;
pub mod task_root;
