//! Which methods may be sent twice, read from the protos: a method marked
//! `option idempotency_level = NO_SIDE_EFFECTS;` (a read) or `IDEMPOTENT` (doing it twice is doing
//! it once) survives a retry after its request may have reached a server; any other only when the
//! request certainly did not. The option is protobuf's own (`google/protobuf/descriptor.proto`),
//! so the knowledge lives beside the method it describes, not in a list here to keep in step.

use std::collections::HashMap;

use prost::Message;
use prost_types::FileDescriptorSet;
use prost_types::method_options::IdempotencyLevel;

/// What the retry layer (and the gRPC metrics) need to know about one method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodKind {
    /// Marked `NO_SIDE_EFFECTS` or `IDEMPOTENT`.
    pub idempotent: bool,
    /// `unary`, `client_stream`, `server_stream` or `bidi_stream`: the `grpc_type` label of
    /// go-grpc-prometheus' metrics.
    pub grpc_type: &'static str,
}

impl MethodKind {
    /// Neither side streams: the request is one message, which can be buffered and sent again.
    pub fn unary(&self) -> bool {
        self.grpc_type == "unary"
    }
}

/// The methods of a set of protos by gRPC path (`/package.Service/Method`). Paths it does not
/// know are never retried.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdempotentMethods {
    methods: HashMap<String, MethodKind>,
}

impl IdempotentMethods {
    /// The methods of Flotilla's own protos ([`flotilla_proto::FILE_DESCRIPTOR_SET`]).
    ///
    /// # Errors
    /// [`prost::DecodeError`] if the compiled-in descriptor set does not decode (a build broken
    /// in a way tests catch).
    pub fn flotilla() -> Result<Self, prost::DecodeError> {
        Self::from_descriptor_set(flotilla_proto::FILE_DESCRIPTOR_SET)
    }

    /// The methods of an encoded `FileDescriptorSet`.
    ///
    /// # Errors
    /// [`prost::DecodeError`] when the bytes are not one.
    pub fn from_descriptor_set(encoded: &[u8]) -> Result<Self, prost::DecodeError> {
        let mut methods = Self::default();
        methods.add(&FileDescriptorSet::decode(encoded)?);
        Ok(methods)
    }

    /// Adds the methods of every service in `set`, replacing what was known of the same paths.
    pub fn add(&mut self, set: &FileDescriptorSet) {
        for file in &set.file {
            let package = file.package();
            for service in &file.service {
                let service_name = if package.is_empty() {
                    service.name().to_owned()
                } else {
                    format!("{package}.{}", service.name())
                };
                for method in &service.method {
                    let idempotent = method.options.as_ref().is_some_and(|options| {
                        matches!(
                            options.idempotency_level(),
                            IdempotencyLevel::NoSideEffects | IdempotencyLevel::Idempotent
                        )
                    });
                    let grpc_type = match (method.client_streaming(), method.server_streaming()) {
                        (false, false) => "unary",
                        (true, false) => "client_stream",
                        (false, true) => "server_stream",
                        (true, true) => "bidi_stream",
                    };
                    let kind = MethodKind {
                        idempotent,
                        grpc_type,
                    };
                    self.methods
                        .insert(format!("/{service_name}/{}", method.name()), kind);
                }
            }
        }
    }

    /// What is known of the method at `path` (`/package.Service/Method`), if anything.
    pub fn get(&self, path: &str) -> Option<MethodKind> {
        self.methods.get(path).copied()
    }

    /// Every method it knows, by path, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, MethodKind)> {
        self.methods
            .iter()
            .map(|(path, kind)| (path.as_str(), *kind))
    }

    /// How many methods it knows.
    pub fn len(&self) -> usize {
        self.methods.len()
    }

    /// Whether it knows no method.
    pub fn is_empty(&self) -> bool {
        self.methods.is_empty()
    }
}
