//! gRPC server reflection on the host's listeners, as grpcurl, grpcui and grpcio-reflection
//! use it: v1 and v1alpha list exactly the services the host serves, and health's descriptor
//! is found under its canonical file name.

mod common;

use std::collections::BTreeSet;

use common::*;
use tonic::transport::Channel;
use weir::dataplane::netns;
use weir::lab::{self, Lab};

/// Just the `name` of a `google.protobuf.FileDescriptorProto`.
#[derive(Clone, PartialEq, prost::Message)]
struct FileName {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
}

/// What one reflection version answers: the listed services, and the file names holding
/// `symbol`. The two versions' messages are the same but for their package.
macro_rules! ask {
    ($name:ident, $version:ident) => {
        async fn $name(ch: Channel, symbol: &str) -> (BTreeSet<String>, Vec<String>) {
            use tonic_reflection::pb::$version::ServerReflectionRequest;
            use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
            use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
            use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
            let v = stringify!($version);
            let reqs = [
                MessageRequest::ListServices(String::new()),
                MessageRequest::FileContainingSymbol(symbol.into()),
            ]
            .map(|m| ServerReflectionRequest {
                host: String::new(),
                message_request: Some(m),
            });
            let mut stream = ServerReflectionClient::new(ch)
                .server_reflection_info(tokio_stream::iter(reqs))
                .await
                .unwrap_or_else(|e| panic!("reflection {v} answers: {e}"))
                .into_inner();
            let (mut services, mut files) = (BTreeSet::new(), Vec::new());
            while let Some(r) = stream.message().await.expect("a reflection reply") {
                match r.message_response.expect("a reflection reply's body") {
                    MessageResponse::ListServicesResponse(l) => {
                        services.extend(l.service.into_iter().map(|s| s.name))
                    }
                    MessageResponse::FileDescriptorResponse(f) => files.extend(
                        f.file_descriptor_proto
                            .iter()
                            .map(|b| <FileName as prost::Message>::decode(b.as_slice()).unwrap())
                            .map(|f| f.name.unwrap_or_default()),
                    ),
                    other => panic!("unexpected {v} reply {other:?}"),
                }
            }
            (services, files)
        }
    };
}

ask!(ask_v1, v1);
ask!(ask_v1alpha, v1alpha);

/// Both versions on one channel: (v1 services, v1alpha services), each with health's file.
async fn both(ch: Channel) -> [(BTreeSet<String>, Vec<String>); 2] {
    [
        ask_v1(ch.clone(), "grpc.health.v1.Health").await,
        ask_v1alpha(ch, "grpc.health.v1.Health").await,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1_and_v1alpha_list_exactly_the_served_services_on_every_listener() {
    let mut s = spec("refl");
    s.runners = 0;
    s.workloads_per_runner = 0;
    let lab = must(Lab::up(s).await);
    let served: BTreeSet<String> = [
        "weir.v1.Agent",
        "weir.v1.Control",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ]
    .map(String::from)
    .into();

    // The unix socket, from here; reflection needs no token.
    let unix = weir::api::client::connect(&lab.control_url(), Default::default())
        .await
        .unwrap();
    // The TCP listener, from inside the host's namespace (a runtime on a thread there).
    let url = format!("http://{}:{}", lab::HOST_IP, lab::HOST_PORT);
    let tcp = netns::run_in(&lab.ns("host"), move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let ch = weir::api::client::connect(&url, Default::default())
                    .await
                    .unwrap();
                both(ch).await
            })
    })
    .unwrap();
    for (listener, answers) in [("unix", both(unix).await), ("tcp", tcp)] {
        for ((services, files), version) in answers.into_iter().zip(["v1", "v1alpha"]) {
            assert_eq!(services, served, "{listener} {version}: listed services");
            assert_eq!(
                files,
                ["grpc/health/v1/health.proto"],
                "{listener} {version}: health's file"
            );
        }
    }
    // A service the host does not serve is not listed, but its messages still resolve (the
    // descriptors are shared): asking for it answers rather than failing the stream.
    let ch = weir::api::client::connect(&lab.control_url(), Default::default())
        .await
        .unwrap();
    let (_, files) = ask_v1(ch, "weir.v1.AttachWorkloadRequest").await;
    assert_eq!(files, ["weir/v1/control.proto"]);
}
