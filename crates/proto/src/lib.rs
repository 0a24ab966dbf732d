//! Flotilla's wire contracts: the tonic clients and servers and prost messages generated from
//! `proto/flotilla/**.proto` (the only source of truth for the wire), plus the encoded file
//! descriptor set that server reflection publishes.
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
