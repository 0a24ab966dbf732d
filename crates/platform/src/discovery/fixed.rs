//! The `static` backend: a fixed list of instances per service, from settings. Registration is a
//! no-op (nobody else learns of the instance); watching yields the fixed list once and then waits
//! forever. For tests and for setups where addresses are managed elsewhere (a Kubernetes Service
//! name, say).

use std::collections::BTreeMap;

use super::{Instance, InstanceStream, Registration, Registry, RegistryFuture};

/// Fixed instances by service name.
#[derive(Debug, Clone, Default)]
pub struct FixedRegistry {
    services: BTreeMap<String, Vec<Instance>>,
}

impl FixedRegistry {
    /// A registry that reports `instances` for `service`.
    #[must_use]
    pub fn with_service(mut self, service: &str, mut instances: Vec<Instance>) -> Self {
        instances.sort();
        self.services.insert(service.to_owned(), instances);
        self
    }
}

impl Registry for FixedRegistry {
    fn register<'a>(&'a self, _registration: &'a Registration) -> RegistryFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    fn deregister<'a>(&'a self, _id: &'a str) -> RegistryFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    fn watch(&self, service: &str) -> InstanceStream {
        let instances = self.services.get(service).cloned().unwrap_or_default();
        Box::pin(futures::StreamExt::chain(
            futures::stream::once(async move { instances }),
            futures::stream::pending(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn watching_yields_the_fixed_list_then_nothing() {
        let instance = Instance {
            id: "product-1".into(),
            addr: ([127, 0, 0, 1], 50053).into(),
            tags: Vec::new(),
            meta: BTreeMap::new(),
        };
        let registry = FixedRegistry::default().with_service("product", vec![instance.clone()]);
        let mut watch = registry.watch("product");
        assert_eq!(watch.next().await, Some(vec![instance]));
        let next = tokio::time::timeout(std::time::Duration::from_millis(20), watch.next()).await;
        assert!(next.is_err(), "no further change");
        assert_eq!(registry.watch("user").next().await, Some(Vec::new()));
    }
}
