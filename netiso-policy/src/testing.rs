//! Fixtures for tests of this crate and of its users (feature `testing`). Uses `container`.
use crate::container::{Attachment, Container};

/// A running container named `name` (id `id-<name>`) with these labels,
/// attached to these networks (no addresses).
pub fn container(name: &str, labels: &[(&str, &str)], networks: &[&str]) -> Container {
    Container {
        published: Vec::new(),
        id: format!("id-{name}"),
        name: name.to_string(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        networks: networks
            .iter()
            .map(|n| Attachment {
                network: n.to_string(),
                ..Attachment::default()
            })
            .collect(),
        ..Container::default()
    }
}
