//! What a standby host serves (several hosts on etcd): health with its role, reflection, and
//! for every other call an `UNAVAILABLE` that names the leader, so a runner or a client goes
//! there. Nothing a standby answers has changed anything: such a call is safe to retry.
//!
//! The refusal carries response metadata [`ROLE`] = `standby`, [`LEADER`] and [`LEADER_URL`]
//! (absent while nobody leads), and a message that says the same in words. Health answers
//! `SERVING` for the whole server (`""`) and `NOT_SERVING` for `weir.v1.Control` and
//! `weir.v1.Agent`, so a load balancer's standard health check finds the leader.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::{Server, ServerTlsConfig};
use tonic::{Code, Status};

use crate::cluster::Role;
use crate::transport::leader::ROLE_STANDBY;

/// The response metadata of a refusal: this host's role (`standby`), the leader's name and
/// URL. Defined beside the clients that read them (`transport::leader`).
pub use crate::transport::leader::{
    LEADER_KEY as LEADER, LEADER_URL_KEY as LEADER_URL, ROLE_KEY as ROLE,
};

/// The status a standby answers a call with, given what it knows of the leader.
pub fn refusal(role: &Role) -> Status {
    let (name, leader, refusal) = match role {
        Role::Standby {
            name,
            leader,
            refusal,
        } => (name.as_str(), leader.as_ref(), refusal.as_deref()),
        // Between winning and serving as the hub: it names itself, so nobody goes elsewhere.
        Role::Leader { name, url, term } => {
            let mut md = MetadataMap::new();
            md.insert(ROLE, MetadataValue::from_static(ROLE_STANDBY));
            if let (Ok(n), Ok(u)) = (
                MetadataValue::try_from(name.as_str()),
                MetadataValue::try_from(url.as_str()),
            ) {
                md.insert(LEADER, n);
                md.insert(LEADER_URL, u);
            }
            return Status::with_metadata(
                Code::Unavailable,
                format!(
                    "host {name} is taking over as leader (term {term}); try again in a moment"
                ),
                md,
            );
        }
    };
    let mut md = MetadataMap::new();
    md.insert(ROLE, MetadataValue::from_static(ROLE_STANDBY));
    let why = refusal
        .map(|r| format!(" (it refuses to lead: {r})"))
        .unwrap_or_default();
    let message = match leader {
        Some(l) => {
            if let (Ok(n), Ok(u)) = (
                MetadataValue::try_from(l.name.as_str()),
                MetadataValue::try_from(l.url.as_str()),
            ) {
                md.insert(LEADER, n);
                if !l.url.is_empty() {
                    md.insert(LEADER_URL, u);
                }
            }
            format!(
                "host {name} is a standby{why}; the leader is {} at {} (term {})",
                l.name,
                if l.url.is_empty() {
                    "an unknown URL"
                } else {
                    &l.url
                },
                l.term
            )
        }
        None => format!(
            "host {name} is a standby{why}; no host leads yet (an election is under way); try again"
        ),
    };
    Status::with_metadata(Code::Unavailable, message, md)
}

/// Answers every call but health and reflection with [`refusal`].
#[derive(Clone)]
pub struct StandbyLayer {
    role: watch::Receiver<Role>,
}

impl<S> tower::Layer<S> for StandbyLayer {
    type Service = Standby<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Standby {
            inner,
            role: self.role.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Standby<S> {
    inner: S,
    role: watch::Receiver<Role>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> tower::Service<http::Request<B>> for Standby<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = req.uri().path();
        let served =
            path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.");
        if served {
            return Box::pin(async move { inner.call(req).await });
        }
        let status = refusal(&self.role.borrow());
        Box::pin(async move { Ok(status.into_http()) })
    }
}

/// Serve as a standby on `tcp` (and `unix`) until `stop` resolves; then every connection is
/// closed, so the hub can bind the same addresses.
pub async fn serve(
    role: watch::Receiver<Role>,
    tcp: TcpListener,
    unix: Option<UnixListener>,
    tls: Option<ServerTlsConfig>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    for name in ["weir.v1.Agent", "weir.v1.Control"] {
        health
            .set_service_status(name, tonic_health::ServingStatus::NotServing)
            .await;
    }
    let (tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let layer = StandbyLayer { role };
    let router = |tls: Option<ServerTlsConfig>| -> Result<_, tonic::transport::Error> {
        let mut b = Server::builder();
        if let Some(tls) = tls {
            b = b.tls_config(tls)?;
        }
        Ok(b.layer(layer.clone()).add_service(health_service.clone()))
    };
    let mut tasks = Vec::new();
    let mut rx = tx.subscribe();
    tasks.push(tokio::spawn(router(tls)?.serve_with_incoming_shutdown(
        TcpListenerStream::new(tcp),
        async move {
            let _ = rx.recv().await;
        },
    )));
    if let Some(l) = unix {
        let mut rx = tx.subscribe();
        tasks.push(tokio::spawn(router(None)?.serve_with_incoming_shutdown(
            UnixListenerStream::new(l),
            async move {
                let _ = rx.recv().await;
            },
        )));
    }
    stop.await;
    let _ = tx.send(());
    // Standby answers are immediate: nothing to drain. A runner's idle connection would hold
    // a graceful shutdown open (and the hub's listener from binding): close it.
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::LeaderInfo;

    #[test]
    fn a_refusal_names_the_leader_in_words_and_metadata() {
        let s = refusal(&Role::Standby {
            name: "h2".into(),
            leader: Some(LeaderInfo {
                name: "h1".into(),
                url: "http://192.0.2.1:7700".into(),
                term: 3,
            }),
            refusal: None,
        });
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(
            s.message(),
            "host h2 is a standby; the leader is h1 at http://192.0.2.1:7700 (term 3)"
        );
        let md = s.metadata();
        assert_eq!(md.get(ROLE).unwrap(), "standby");
        assert_eq!(md.get(LEADER).unwrap(), "h1");
        assert_eq!(md.get(LEADER_URL).unwrap(), "http://192.0.2.1:7700");
        let none = refusal(&Role::Standby {
            name: "h2".into(),
            leader: None,
            refusal: Some("its configuration differs".into()),
        });
        assert!(
            none.message().contains("no host leads yet"),
            "{}",
            none.message()
        );
        assert!(
            none.message()
                .contains("refuses to lead: its configuration differs")
        );
        assert!(none.metadata().get(LEADER_URL).is_none());
    }
}
