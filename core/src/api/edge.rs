//! The edge of the host's listeners: limits on callers, and status codes that follow gRPC's
//! conventions where tonic's differ.
//!
//! - Unauthenticated calls (no token the host accepts: health checks, reflection, wrong or
//!   missing tokens) are rate-limited per peer address with a token bucket
//!   (`host.unauthenticated_calls_per_second`, burst of the same size); beyond it the peer gets
//!   RESOURCE_EXHAUSTED before any handler runs. Authenticated calls are never counted.
//! - At most `host.max_concurrent_calls` calls are served at once (counted until their answer
//!   begins: a stream's later messages hold no slot). A call beyond it waits up to
//!   [`SLOT_WAIT`] for a slot, then gets RESOURCE_EXHAUSTED.
//! - A request that is not a valid protobuf message is INVALID_ARGUMENT (tonic says INTERNAL),
//!   a request message over the size limit RESOURCE_EXHAUSTED (tonic says OUT_OF_RANGE), and
//!   no status message is longer than [`MAX_STATUS_MESSAGE`].

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tonic::metadata::MetadataMap;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo, UdsConnectInfo};
use tonic::{Code, Status};

use super::auth::Gate;
use super::{MAX_STATUS_MESSAGE, cap_message};

/// How long a call waits for a slot when `max_concurrent_calls` are being served.
pub const SLOT_WAIT: Duration = Duration::from_secs(5);
/// How many peers' buckets are remembered; full (idle) buckets are forgotten first.
const MAX_PEERS: usize = 4096;

/// tonic's message for a request over the decoding limit (`codec/decode.rs`).
const TOO_LARGE: &str = "Error, decoded message length too large";
/// prost's `DecodeError` message, which tonic-prost turns into INTERNAL.
const UNDECODABLE: &str = "failed to decode Protobuf message";

/// The limits, from `[host]`.
#[derive(Debug, Clone, Copy)]
pub struct EdgeLimits {
    /// Unauthenticated calls per second per peer (also the burst).
    pub unauthenticated_per_second: u32,
    pub max_concurrent_calls: u32,
    /// How long a call beyond `max_concurrent_calls` waits for a slot.
    pub slot_wait: Duration,
}

impl Default for EdgeLimits {
    fn default() -> Self {
        Self {
            unauthenticated_per_second: 20,
            max_concurrent_calls: 256,
            slot_wait: SLOT_WAIT,
        }
    }
}

/// The tower layer in front of a tonic server's routes. Clones share their state, so one
/// layer given to several listeners limits them together.
#[derive(Clone)]
pub struct EdgeLayer {
    shared: Arc<Shared>,
}

struct Shared {
    limits: EdgeLimits,
    gate: Gate,
    slots: Arc<Semaphore>,
    peers: Mutex<HashMap<Peer, Bucket>>,
}

impl EdgeLayer {
    pub fn new(limits: EdgeLimits, gate: Gate) -> Self {
        let slots = Arc::new(Semaphore::new(limits.max_concurrent_calls.max(1) as usize));
        Self {
            shared: Arc::new(Shared {
                limits,
                gate,
                slots,
                peers: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl<S> tower::Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Edge {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Edge<S> {
    inner: S,
    shared: Arc<Shared>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> tower::Service<http::Request<B>> for Edge<S>
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
        // The clone that was polled ready serves this call (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        let admitted = shared.admit(&req);
        Box::pin(async move {
            if let Err(refusal) = admitted {
                return Ok(refusal.into_http());
            }
            let slot = match shared.slots.clone().try_acquire_owned() {
                Ok(s) => s,
                Err(_) => {
                    let wait = shared.limits.slot_wait;
                    match tokio::time::timeout(wait, shared.slots.clone().acquire_owned()).await {
                        Ok(Ok(s)) => s,
                        _ => {
                            return Ok(Status::resource_exhausted(format!(
                                "the host is serving its limit of {} concurrent calls (host.max_concurrent_calls) and none finished within {}s; retry with backoff",
                                shared.limits.max_concurrent_calls,
                                wait.as_secs_f64()
                            ))
                            .into_http());
                        }
                    }
                }
            };
            let response = inner.call(req).await;
            drop(slot);
            response.map(conventional)
        })
    }
}

impl Shared {
    /// Whether the call may proceed: authenticated, or within its peer's allowance.
    fn admit<B>(&self, req: &http::Request<B>) -> Result<(), Status> {
        if self.gate.admits(req.headers()) {
            return Ok(());
        }
        let peer = Peer::of(req.extensions());
        let rate = f64::from(self.limits.unauthenticated_per_second.max(1));
        let now = Instant::now();
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if !peers.contains_key(&peer) && peers.len() >= MAX_PEERS {
            peers.retain(|_, b| !b.is_full(rate, now));
            if peers.len() >= MAX_PEERS {
                return Err(Status::resource_exhausted(format!(
                    "{MAX_PEERS} peers are making unauthenticated calls; present a valid token or retry later"
                )));
            }
        }
        let bucket = peers.entry(peer).or_insert(Bucket {
            tokens: rate,
            at: now,
        });
        if bucket.take(rate, now) {
            Ok(())
        } else {
            Err(Status::resource_exhausted(format!(
                "too many unauthenticated calls from {peer}: at most {} per second (host.unauthenticated_calls_per_second); present a valid token or slow down",
                self.limits.unauthenticated_per_second
            )))
        }
    }
}

/// Who is calling: an IPv4 address, an IPv6 /64 (one machine's usual share), or the local
/// socket (every local caller together).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Peer {
    Ip(IpAddr),
    Local,
    Unknown,
}

impl Peer {
    fn of(ext: &http::Extensions) -> Peer {
        let tcp = ext.get::<TcpConnectInfo>().or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .map(|t| t.get_ref())
        });
        if let Some(addr) = tcp.and_then(|t| t.remote_addr()) {
            return Peer::Ip(match addr.ip().to_canonical() {
                IpAddr::V6(v6) => {
                    let s = v6.segments();
                    IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
                }
                v4 => v4,
            });
        }
        if ext.get::<UdsConnectInfo>().is_some() {
            return Peer::Local;
        }
        Peer::Unknown
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Ip(IpAddr::V6(a)) => write!(f, "{a}/64"),
            Peer::Ip(a) => write!(f, "{a}"),
            Peer::Local => f.write_str("the local socket"),
            Peer::Unknown => f.write_str("an unknown peer"),
        }
    }
}

/// A token bucket holding up to `rate` tokens, refilled at `rate` per second.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, rate: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.at = now;
    }

    fn take(&mut self, rate: f64, now: Instant) -> bool {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn is_full(&self, rate: f64, now: Instant) -> bool {
        let mut b = *self;
        b.refill(rate, now);
        b.tokens >= rate
    }
}

/// A trailers-only answer (an error before any message) with gRPC's code for what tonic
/// reports differently, and its message capped.
fn conventional<RB>(mut response: http::Response<RB>) -> http::Response<RB> {
    // tonic puts the status of an error answer into the response's extensions.
    let Some(status) = response.extensions().get::<Status>() else {
        return response;
    };
    let (code, message) = match (status.code(), status.message()) {
        (Code::OutOfRange, m) if m.starts_with(TOO_LARGE) => (
            Code::ResourceExhausted,
            format!(
                "the request message is too large ({}); send a smaller one",
                m.trim_start_matches(TOO_LARGE)
                    .trim_start_matches([':', ' '])
            ),
        ),
        (Code::Internal, m) if m.starts_with(UNDECODABLE) => (
            Code::InvalidArgument,
            format!("the request is not a valid message of this call's type ({m})"),
        ),
        (_, m) if m.len() > MAX_STATUS_MESSAGE => (status.code(), m.to_string()),
        _ => return response,
    };
    let fixed = Status::with_metadata(code, cap_message(message), MetadataMap::new());
    let headers = response.headers_mut();
    headers.remove(Status::GRPC_STATUS);
    headers.remove(Status::GRPC_MESSAGE);
    if fixed.add_header(headers).is_err() {
        // A message is always encodable; keep a valid code whatever happens.
        headers.insert(Status::GRPC_STATUS, http::HeaderValue::from(code as i32));
    }
    response.extensions_mut().insert(fixed);
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{Layer, Service};

    /// A handler that answers OK, or waits for `release` first.
    #[derive(Clone)]
    struct Handler {
        release: Option<Arc<tokio::sync::Notify>>,
        started: Arc<tokio::sync::Notify>,
    }

    impl Service<http::Request<()>> for Handler {
        type Response = http::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = BoxFuture<Result<Self::Response, Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let (release, started) = (self.release.clone(), self.started.clone());
            Box::pin(async move {
                started.notify_one();
                if let Some(r) = release {
                    r.notified().await;
                }
                Ok(Status::ok("").into_http())
            })
        }
    }

    fn code_of(r: &http::Response<tonic::body::Body>) -> Code {
        r.headers()
            .get("grpc-status")
            .map_or(Code::Ok, |v| Code::from_bytes(v.as_bytes()))
    }

    fn request(token: Option<&str>, ip: &str) -> http::Request<()> {
        let mut req = http::Request::new(());
        if let Some(t) = token {
            req.headers_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        req.extensions_mut().insert(TcpConnectInfo {
            local_addr: None,
            remote_addr: Some(std::net::SocketAddr::new(ip.parse().unwrap(), 40000)),
        });
        req
    }

    const TOKEN: &str = "a-control-token-of-enough-length";

    fn gate() -> Gate {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let file = std::env::temp_dir().join(format!("weir-edge-test-{}-{n}", std::process::id()));
        std::fs::write(&file, TOKEN).unwrap();
        let control = crate::auth::TokenSet::load(std::slice::from_ref(&file)).unwrap();
        let _ = std::fs::remove_file(&file);
        Gate::new(control, Default::default(), false)
    }

    #[tokio::test]
    async fn unauthenticated_calls_are_limited_per_peer_and_authenticated_ones_never() {
        let limits = EdgeLimits {
            unauthenticated_per_second: 3,
            ..Default::default()
        };
        let handler = Handler {
            release: None,
            started: Default::default(),
        };
        let mut svc = EdgeLayer::new(limits, gate()).layer(handler);
        let mut codes = Vec::new();
        for _ in 0..6 {
            codes.push(code_of(
                &svc.call(request(None, "192.0.2.1")).await.unwrap(),
            ));
        }
        assert_eq!(&codes[..3], &[Code::Ok; 3]);
        assert!(codes[3..].contains(&Code::ResourceExhausted), "{codes:?}");
        // Another peer has its own allowance; a token is never limited.
        let r = svc.call(request(None, "192.0.2.2")).await.unwrap();
        assert_eq!(code_of(&r), Code::Ok);
        for _ in 0..50 {
            let r = svc.call(request(Some(TOKEN), "192.0.2.1")).await.unwrap();
            assert_eq!(code_of(&r), Code::Ok);
        }
        let r = svc.call(request(None, "192.0.2.1")).await.unwrap();
        assert_eq!(code_of(&r), Code::ResourceExhausted);
        let msg = r
            .extensions()
            .get::<Status>()
            .unwrap()
            .message()
            .to_string();
        assert!(
            msg.contains("192.0.2.1") && msg.contains("host.unauthenticated_calls_per_second"),
            "{msg}"
        );
        // A wrong token is no token.
        let r = svc
            .call(request(Some("not-the-token-0123456789"), "192.0.2.1"))
            .await
            .unwrap();
        assert_eq!(code_of(&r), Code::ResourceExhausted);
    }

    #[tokio::test]
    async fn calls_beyond_the_concurrency_limit_wait_then_are_refused() {
        let limits = EdgeLimits {
            max_concurrent_calls: 1,
            slot_wait: Duration::from_millis(300),
            ..Default::default()
        };
        let release = Arc::new(tokio::sync::Notify::new());
        let started = Arc::new(tokio::sync::Notify::new());
        let handler = Handler {
            release: Some(release.clone()),
            started: started.clone(),
        };
        let layer = EdgeLayer::new(limits, gate());
        let mut first = layer.layer(handler.clone());
        let busy = tokio::spawn(async move { first.call(request(Some(TOKEN), "::1")).await });
        started.notified().await;
        // The slot is taken: a second call waits 300 ms, then is refused.
        let mut second = layer.layer(Handler {
            release: None,
            started: Default::default(),
        });
        let r = second.call(request(Some(TOKEN), "::1")).await.unwrap();
        assert_eq!(code_of(&r), Code::ResourceExhausted);
        let msg = r
            .extensions()
            .get::<Status>()
            .unwrap()
            .message()
            .to_string();
        assert!(msg.contains("host.max_concurrent_calls"), "{msg}");
        // A call that waits gets the slot once it is free.
        let waiting = tokio::spawn(async move { second.call(request(Some(TOKEN), "::1")).await });
        release.notify_one();
        assert_eq!(code_of(&busy.await.unwrap().unwrap()), Code::Ok);
        assert_eq!(code_of(&waiting.await.unwrap().unwrap()), Code::Ok);
    }

    /// Real tonic decoding errors (a health check with bad bytes) come out with gRPC's codes.
    #[tokio::test]
    async fn tonic_decode_errors_get_grpc_conventional_codes() {
        let (_, health) = tonic_health::server::health_reporter();
        let mut svc = EdgeLayer::new(EdgeLimits::default(), gate())
            .layer(health.max_decoding_message_size(16));
        let call = |payload: Vec<u8>| {
            let mut framed = vec![0u8];
            framed.extend((payload.len() as u32).to_be_bytes());
            framed.extend(payload);
            let mut req = http::Request::new(axum::body::Body::from(framed));
            *req.uri_mut() = "/grpc.health.v1.Health/Check".parse().unwrap();
            req.headers_mut()
                .insert("content-type", "application/grpc".parse().unwrap());
            req.headers_mut()
                .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
            req
        };
        let r = svc.call(call(b"\x0a\x05ab".to_vec())).await.unwrap();
        assert_eq!(code_of(&r), Code::InvalidArgument);
        let msg = r
            .extensions()
            .get::<Status>()
            .unwrap()
            .message()
            .to_string();
        assert!(msg.contains("not a valid message"), "{msg}");
        let r = svc.call(call(vec![0x0a; 64])).await.unwrap();
        assert_eq!(code_of(&r), Code::ResourceExhausted);
        let msg = r
            .extensions()
            .get::<Status>()
            .unwrap()
            .message()
            .to_string();
        assert!(
            msg.contains("too large") && msg.contains("64 bytes"),
            "{msg}"
        );
        // A valid request still works.
        let r = svc.call(call(Vec::new())).await.unwrap();
        assert_eq!(code_of(&r), Code::Ok, "{:?}", r.headers());
    }

    #[test]
    fn long_status_messages_are_capped() {
        let r: http::Response<tonic::body::Body> =
            Status::not_found("x".repeat(20_000)).into_http();
        let r = conventional(r);
        assert_eq!(code_of(&r), Code::NotFound);
        let msg = r
            .extensions()
            .get::<Status>()
            .unwrap()
            .message()
            .to_string();
        assert!(
            msg.len() <= MAX_STATUS_MESSAGE && msg.contains("20000 bytes in all"),
            "{msg}"
        );
        // The header carries it percent-encoded ("…" is 9 bytes there).
        let header = r.headers().get("grpc-message").unwrap();
        assert!(header.len() <= MAX_STATUS_MESSAGE + 16, "{}", header.len());
    }
}
