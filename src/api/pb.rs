//! Code generated from `proto/`. Kept apart from the domain types: the cores
//! never see these, `api` converts at the edge.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// readyd's own API.
pub mod readyd {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("readyd.v1");
    }
}

/// The standard gRPC health checking protocol.
pub mod grpc_health_v1 {
    tonic::include_proto!("grpc.health.v1");
}

/// The flagd evaluation protocol, for OpenFeature's flagd providers.
pub mod flagd {
    /// Evaluation API, version 1 (deprecated by flagd, still used).
    pub mod evaluation_v1 {
        tonic::include_proto!("flagd.evaluation.v1");
    }
    /// Evaluation API, version 2.
    pub mod evaluation_v2 {
        tonic::include_proto!("flagd.evaluation.v2");
    }
}

/// Encoded descriptors of every service, for the reflection service.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("readyd_descriptor");
