//! Host adapters: Docker (bollard) and netlink (veths, links, addresses); they may use `model` only.
pub mod docker;
pub mod link_watch;
pub mod netlink;
pub mod rtnl;
