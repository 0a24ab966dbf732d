//! Flotilla's wire contracts: the tonic clients and servers and prost messages generated from
//! `proto/flotilla/**.proto` (the only source of truth for the wire), plus the encoded file
//! descriptor set that server reflection publishes.
//!
//! [`etcd`] holds the clients of etcd's v3 API, from a trimmed copy of etcd's own protos
//! (`proto/etcd/**`), for the etcd discovery backend. They are not part of
//! [`FILE_DESCRIPTOR_SET`]: Flotilla calls etcd, it does not serve it.
//!
//! Generated code carries the protos' own comments as docs; it is not hand-edited.

#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

/// The encoded `FileDescriptorSet` of every Flotilla proto, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/flotilla_descriptor.bin"));

mod redacted;

pub mod user {
    pub mod v1 {
        tonic::include_proto!("flotilla.user.v1");
    }
}

pub mod auth {
    pub mod v1 {
        tonic::include_proto!("flotilla.auth.v1");
    }
}

pub mod product {
    pub mod v1 {
        tonic::include_proto!("flotilla.product.v1");
    }
}

/// etcd's v3 gRPC API, client side only: the `KV`, `Lease` and `Watch` services and the messages they
/// carry, with etcd's own package names, so the paths on the wire are etcd's
/// (`/etcdserverpb.KV/Range`).
pub mod etcd {
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }

    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
}
