//! Several hosts, one leader (issue 18): find the host that leads among a list of URLs, and a
//! channel that follows the leader when a standby refuses a call.
//!
//! What a client relies on (the host side of failover implements it):
//!
//! - A **standby** answers every `weir.v1.Control` and `weir.v1.Agent` call with `UNAVAILABLE`
//!   and the response metadata `weir-role: standby`, plus `weir-leader: NAME` and
//!   `weir-leader-url: URL` when it knows the leader. Nothing of such a call was applied: it is
//!   always safe to send it again elsewhere ([`Standby`]).
//! - Every host serves `grpc.health.v1.Health`: `Check{service: "weir.v1.Control"}` is `SERVING`
//!   on the leader (and on a single host without failover) and `NOT_SERVING` on a standby
//!   ([`Hosts::find_leader`]).
//!
//! A client given one URL needs none of this ([`LeaderChannel::single`] passes calls through);
//! given several, it probes them in order for the leader, and a call a standby refuses goes to
//! the leader the refusal names, or to the leader found anew over the list
//! ([`LeaderChannel::connect`]).

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::codegen::{Bytes, Service};
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::{ChannelOptions, ClientError, ClientTls, code_name, connect_tls, endpoint_tls};

/// The response metadata key saying which role the answering host has (`standby`).
pub const ROLE_KEY: &str = "weir-role";
/// The value of [`ROLE_KEY`] on a standby's refusal.
pub const ROLE_STANDBY: &str = "standby";
/// The response metadata key naming the leader (a host name), when the standby knows it.
pub const LEADER_KEY: &str = "weir-leader";
/// The response metadata key giving the leader's URL, when the standby knows it.
pub const LEADER_URL_KEY: &str = "weir-leader-url";
/// The service whose health says whether a host leads.
pub const CONTROL_SERVICE: &str = "weir.v1.Control";

/// How long a client given several hosts keeps looking for a leader while none answers as one
/// (an election under way, the leader restarting, every host unreachable for a moment): it goes
/// over the whole list again every [`LEADER_RETRY`] until this much time has passed since it
/// started, then fails naming every URL and its last answer.
pub const LEADER_WAIT: Duration = Duration::from_secs(5);
/// The pause between two rounds over the list while no host leads.
pub const LEADER_RETRY: Duration = Duration::from_millis(200);
/// How many times one call is sent again after a standby refused it (to the leader the refusal
/// names, or to the leader found anew over the list); past it the refusal is the answer.
pub const MAX_LEADER_HOPS: usize = 3;
/// The largest request a [`LeaderChannel`] over several hosts holds to send again (the host
/// takes at most 4 MiB).
const MAX_REPLAYED_REQUEST: usize = 8 << 20;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a standby's refusal says about the leader.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Standby {
    /// The leader's name (`weir-leader`), when the standby knows it.
    pub leader: Option<String>,
    /// The leader's URL (`weir-leader-url`), when the standby knows it.
    pub leader_url: Option<String>,
}

impl Standby {
    /// The standby's refusal in `status`, if it is one (`UNAVAILABLE` with `weir-role: standby`).
    pub fn of(status: &Status) -> Option<Self> {
        if status.code() != Code::Unavailable {
            return None;
        }
        Self::from_headers(status.metadata().as_ref())
    }

    /// The standby's refusal in a response's headers (a trailers-only answer carries its status
    /// and metadata there): `grpc-status` 14 (`UNAVAILABLE`) and `weir-role: standby`.
    pub fn from_headers(headers: &http::HeaderMap) -> Option<Self> {
        let get = |key: &str| {
            headers
                .get(key)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(String::from)
        };
        if get(ROLE_KEY)? != ROLE_STANDBY {
            return None;
        }
        if let Some(code) = get("grpc-status")
            && code != (Code::Unavailable as i32).to_string()
        {
            return None;
        }
        Some(Self {
            leader: get(LEADER_KEY),
            leader_url: get(LEADER_URL_KEY),
        })
    }

    /// The refusal a standby answers with: `UNAVAILABLE` with `message` and this metadata
    /// (a name or URL that is not a valid header value is left out).
    pub fn refusal(&self, message: impl Into<String>) -> Status {
        let mut status = Status::unavailable(message);
        let md = status.metadata_mut();
        md.insert(ROLE_KEY, AsciiMetadataValue::from_static(ROLE_STANDBY));
        for (key, value) in [
            (LEADER_KEY, &self.leader),
            (LEADER_URL_KEY, &self.leader_url),
        ] {
            if let Some(v) = value.as_deref().and_then(|v| v.parse().ok()) {
                md.insert(key, v);
            }
        }
        status
    }
}

/// `--host` / `WEIR_HOST`: one URL, or several separated by commas (blanks around them and
/// empty items are ignored). Each URL is checked later, when its endpoint is built.
pub fn parse_host_list(s: &str) -> Result<Vec<String>, ClientError> {
    let urls: Vec<String> = s
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(String::from)
        .collect();
    if urls.is_empty() {
        return Err(ClientError::BadUrl {
            url: s.to_string(),
            reason: "no URL in it".into(),
        });
    }
    Ok(urls)
}

/// Several hosts of one cluster, and how to reach them.
#[derive(Debug, Clone)]
pub struct Hosts {
    urls: Vec<String>,
    opts: ChannelOptions,
    tls: ClientTls,
    probe_metadata: MetadataMap,
    wait: Duration,
}

impl Hosts {
    /// The hosts at `urls`, in the order to try them. Every URL is checked now: the first one
    /// that cannot work is [`ClientError::BadUrl`].
    pub fn new(
        urls: Vec<String>,
        opts: ChannelOptions,
        tls: &ClientTls,
    ) -> Result<Self, ClientError> {
        if urls.is_empty() {
            return Err(ClientError::BadUrl {
                url: String::new(),
                reason: "no URL given".into(),
            });
        }
        for u in &urls {
            endpoint_tls(u, opts, tls)?;
        }
        Ok(Self {
            urls,
            opts,
            tls: tls.clone(),
            probe_metadata: MetadataMap::new(),
            wait: LEADER_WAIT,
        })
    }

    /// Metadata every health probe carries, e.g. the caller's `authorization`: a probe with a
    /// token the host accepts is not counted against `host.unauthenticated_calls_per_second`.
    pub fn with_probe_metadata(mut self, metadata: MetadataMap) -> Self {
        self.probe_metadata = metadata;
        self
    }

    /// How long [`Self::find_leader`] looks for a leader (default [`LEADER_WAIT`]).
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The leader: the first URL, in order, that accepts a connection and whose health says
    /// `SERVING` for `weir.v1.Control` (connecting and the check each within the connect
    /// timeout). While none does, the list is tried again every [`LEADER_RETRY`] until the wait
    /// ([`LEADER_WAIT`]) is over; then [`ClientError::NoLeader`] names each URL and its last
    /// answer.
    pub async fn find_leader(&self) -> Result<(String, Channel), ClientError> {
        let start = Instant::now();
        loop {
            let mut answers = Vec::with_capacity(self.urls.len());
            for url in &self.urls {
                match self.probe(url).await {
                    Ok(channel) => return Ok((url.clone(), channel)),
                    Err(why) => answers.push((url.clone(), why)),
                }
            }
            let elapsed = start.elapsed();
            if elapsed >= self.wait {
                return Err(ClientError::NoLeader {
                    answers,
                    waited: self.wait,
                });
            }
            tokio::time::sleep(LEADER_RETRY.min(self.wait - elapsed)).await;
        }
    }

    /// A channel to `url` if it leads; otherwise what it answered.
    async fn probe(&self, url: &str) -> Result<Channel, String> {
        let channel = connect_tls(url, self.opts, &self.tls)
            .await
            .map_err(|e| match e {
                ClientError::Connect { reason, .. } => format!("cannot connect: {reason}"),
                other => other.to_string(),
            })?;
        let timeout = self.opts.connect_timeout;
        let mut req = tonic::Request::new(HealthCheckRequest {
            service: CONTROL_SERVICE.into(),
        });
        *req.metadata_mut() = self.probe_metadata.clone();
        req.set_timeout(timeout);
        let answer = tokio::time::timeout(timeout, HealthClient::new(channel.clone()).check(req))
            .await
            .map_err(|_| {
                format!(
                    "no health answer within {}",
                    humantime::format_duration(timeout)
                )
            })?
            .map_err(|st| format!("health check: {}: {}", code_name(st.code()), st.message()))?;
        match ServingStatus::try_from(answer.into_inner().status) {
            Ok(ServingStatus::Serving) => Ok(channel),
            Ok(ServingStatus::NotServing) => Err("NOT_SERVING (a standby)".into()),
            Ok(other) => Err(format!("health: {}", other.as_str_name())),
            Err(_) => Err("health: an unknown serving status".into()),
        }
    }
}

/// The text of [`ClientError::NoLeader`].
pub(super) fn no_leader_text(answers: &[(String, String)], waited: Duration) -> String {
    let mut s = format!(
        "no host leads: none of the {} hosts answered as the leader (tried for {}, every {})",
        answers.len(),
        humantime::format_duration(waited),
        humantime::format_duration(LEADER_RETRY),
    );
    for (url, why) in answers {
        s.push_str(&format!("\n  {url}: {why}"));
    }
    s
}

/// A channel to the leader, as a tower service for generated clients
/// (`ControlClient::new(channel)`, or with an interceptor).
///
/// Over one host ([`Self::single`]) it is the plain channel. Over several
/// ([`Self::connect`]) it holds each request (a single message: meant for `weir.v1.Control`,
/// whose calls all send one; a streaming request would be held until it ends), and when a
/// standby refuses the call ([`Standby`]), or the connection to the host cannot be made (so
/// nothing was sent), sends it again: to the leader the refusal names, else to the leader found
/// over the list anew — at most [`MAX_LEADER_HOPS`] times; the last refusal is then the
/// answer. Later calls go to the host that answered. Other failures, a broken call above all
/// (it may have been applied), are the caller's.
#[derive(Clone)]
pub struct LeaderChannel {
    inner: Arc<Inner>,
}

struct Inner {
    hosts: Option<Hosts>,
    current: Mutex<(String, Channel)>,
}

impl LeaderChannel {
    /// A channel to one host, passing every call through unchanged.
    pub fn single(url: impl Into<String>, channel: Channel) -> Self {
        Self {
            inner: Arc::new(Inner {
                hosts: None,
                current: Mutex::new((url.into(), channel)),
            }),
        }
    }

    /// Find the leader among `hosts` ([`Hosts::find_leader`]) and follow it from then on.
    pub async fn connect(hosts: Hosts) -> Result<Self, ClientError> {
        let current = hosts.find_leader().await?;
        Ok(Self {
            inner: Arc::new(Inner {
                hosts: Some(hosts),
                current: Mutex::new(current),
            }),
        })
    }

    /// The URL calls go to now.
    pub fn url(&self) -> String {
        self.inner.current().0
    }
}

impl Inner {
    fn current(&self) -> (String, Channel) {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_current(&self, url: &str, channel: &Channel) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) =
            (url.to_string(), channel.clone());
    }

    async fn call(
        &self,
        req: http::Request<tonic::body::Body>,
    ) -> Result<http::Response<tonic::body::Body>, BoxError> {
        let (mut url, mut channel) = self.current();
        let Some(hosts) = &self.hosts else {
            return send(&mut channel, req).await;
        };
        let (head, body) = req.into_parts();
        let body: Bytes = axum::body::to_bytes(axum::body::Body::new(body), MAX_REPLAYED_REQUEST)
            .await
            .map_err(|e| format!("hold the request to send it again: {e}"))?;
        let mut hops = 0;
        loop {
            let req = http::Request::from_parts(
                head.clone(),
                tonic::body::Body::new(axum::body::Body::from(body.clone())),
            );
            let follow = match send(&mut channel, req).await {
                Ok(response) => match Standby::from_headers(response.headers()) {
                    Some(standby) if hops < MAX_LEADER_HOPS => {
                        standby.leader_url.filter(|u| *u != url)
                    }
                    _ => return Ok(response),
                },
                Err(e) if hops < MAX_LEADER_HOPS && is_connect_error(&*e) => None,
                Err(e) => return Err(e),
            };
            hops += 1;
            let next = match follow {
                Some(u) => match connect_tls(&u, hosts.opts, &hosts.tls).await {
                    Ok(c) => Ok((u, c)),
                    // The leader named cannot be reached: look over the list.
                    Err(_) => hosts.find_leader().await,
                },
                None => hosts.find_leader().await,
            };
            match next {
                Ok((u, c)) => {
                    (url, channel) = (u, c);
                    self.set_current(&url, &channel);
                }
                Err(e) => return Ok(Status::unavailable(e.to_string()).into_http()),
            }
        }
    }
}

async fn send(
    channel: &mut Channel,
    req: http::Request<tonic::body::Body>,
) -> Result<http::Response<tonic::body::Body>, BoxError> {
    poll_fn(|cx| channel.poll_ready(cx)).await?;
    Ok(channel.call(req).await?)
}

/// Whether a failed call never reached a host: the connection could not be made.
fn is_connect_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(err) = source {
        if err.is::<tonic::ConnectError>() {
            return true;
        }
        source = err.source();
    }
    false
}

impl Service<http::Request<tonic::body::Body>> for LeaderChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is the current channel's, awaited in `call` (the channel may change).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move { inner.call(req).await })
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tonic::server::NamedService;
    use tonic_health::server::HealthReporter;
    use weir_proto::v1::GetStatusRequest;
    use weir_proto::v1::control_client::ControlClient;

    use super::*;
    use crate::transport::endpoint;

    fn opts() -> ChannelOptions {
        ChannelOptions {
            connect_timeout: Duration::from_secs(2),
            keepalive: None,
        }
    }

    fn hosts(urls: &[&str]) -> Hosts {
        Hosts::new(
            urls.iter().map(|u| u.to_string()).collect(),
            opts(),
            &ClientTls::default(),
        )
        .unwrap()
    }

    /// `weir.v1.Control` answering every call with the same status, counting them.
    #[derive(Clone)]
    struct FakeControl {
        answer: Arc<dyn Fn() -> Status + Send + Sync>,
        calls: Arc<AtomicUsize>,
    }

    impl NamedService for FakeControl {
        const NAME: &'static str = CONTROL_SERVICE;
    }

    impl Service<http::Request<tonic::body::Body>> for FakeControl {
        type Response = http::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _req: http::Request<tonic::body::Body>) -> Self::Future {
            self.calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok((self.answer)().into_http()))
        }
    }

    /// A host on loopback: its health for `weir.v1.Control`, and its fixed answer to calls.
    struct FakeHost {
        url: String,
        health: HealthReporter,
        calls: Arc<AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    impl FakeHost {
        async fn start(serving: bool, answer: impl Fn() -> Status + Send + Sync + 'static) -> Self {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let (health, health_service) = tonic_health::server::health_reporter();
            let calls = Arc::new(AtomicUsize::new(0));
            let control = FakeControl {
                answer: Arc::new(answer),
                calls: calls.clone(),
            };
            let task = tokio::spawn(async move {
                let _ = tonic::transport::Server::builder()
                    .add_service(health_service)
                    .add_service(control)
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                    .await;
            });
            let host = Self {
                url,
                health,
                calls,
                task,
            };
            host.serving(serving).await;
            host
        }

        async fn serving(&self, serving: bool) {
            let status = if serving {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            self.health
                .set_service_status(CONTROL_SERVICE, status)
                .await;
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    impl Drop for FakeHost {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// A loopback URL nothing listens on.
    async fn dead_url() -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("http://{}", l.local_addr().unwrap())
    }

    async fn get_status(channel: &LeaderChannel) -> Status {
        ControlClient::new(channel.clone())
            .get_status(GetStatusRequest {})
            .await
            .expect_err("every fake answers with a status")
    }

    fn standby_of(leader_url: &str) -> Standby {
        Standby {
            leader: Some("h1".into()),
            leader_url: Some(leader_url.into()),
        }
    }

    #[test]
    fn host_lists_are_one_url_or_several_separated_by_commas() {
        assert_eq!(parse_host_list("http://a:7700").unwrap(), ["http://a:7700"]);
        assert_eq!(
            parse_host_list(" http://a:7700 ,unix:///run/weir/host.sock,, https://b:7700,")
                .unwrap(),
            [
                "http://a:7700",
                "unix:///run/weir/host.sock",
                "https://b:7700"
            ]
        );
        for bad in ["", " ", ",", " , ,"] {
            let e = parse_host_list(bad).unwrap_err();
            assert!(matches!(e, ClientError::BadUrl { .. }), "{bad:?}: {e}");
            assert!(e.to_string().contains("no URL in it"), "{e}");
        }
        // Every URL of a list is checked before any is tried.
        let e = Hosts::new(
            vec!["http://a:7700".into(), "ftp://b:7700".into()],
            opts(),
            &ClientTls::default(),
        )
        .unwrap_err();
        assert!(matches!(e, ClientError::BadUrl { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("\"ftp://b:7700\": unsupported scheme"),
            "{e}"
        );
    }

    #[test]
    fn no_leader_names_every_url_and_its_answer() {
        let e = ClientError::NoLeader {
            answers: vec![
                (
                    "http://192.0.2.1:7700".into(),
                    "cannot connect: transport error".into(),
                ),
                (
                    "unix:///run/weir/host.sock".into(),
                    "NOT_SERVING (a standby)".into(),
                ),
            ],
            waited: LEADER_WAIT,
        };
        assert_eq!(
            e.to_string(),
            "no host leads: none of the 2 hosts answered as the leader (tried for 5s, every \
             200ms)\n  http://192.0.2.1:7700: cannot connect: transport error\n  \
             unix:///run/weir/host.sock: NOT_SERVING (a standby)"
        );
    }

    #[test]
    fn a_standby_refusal_says_where_the_leader_is() {
        let s = standby_of("http://192.0.2.1:7700");
        let st = s.refusal("host h2 is a standby; the leader is h1 at http://192.0.2.1:7700");
        assert_eq!(st.code(), Code::Unavailable);
        assert_eq!(Standby::of(&st).as_ref(), Some(&s));
        // As a trailers-only answer puts it on the wire: status and metadata in the headers.
        let response = st.into_http::<tonic::body::Body>();
        assert_eq!(Standby::from_headers(response.headers()), Some(s));
        let none = Standby::default().refusal("host h2 is a standby; no host leads yet");
        assert_eq!(Standby::of(&none), Some(Standby::default()));
        // Not a standby's: another UNAVAILABLE, or another code with the role.
        assert_eq!(
            Standby::of(&Status::unavailable("the runner did not answer")),
            None
        );
        let mut other = Status::not_found("x");
        other
            .metadata_mut()
            .insert(ROLE_KEY, AsciiMetadataValue::from_static(ROLE_STANDBY));
        assert_eq!(Standby::of(&other), None);
        assert_eq!(
            Standby::from_headers(other.into_http::<tonic::body::Body>().headers()),
            None
        );
    }

    #[tokio::test]
    async fn the_leader_is_the_first_host_in_order_that_is_serving() {
        let dead = dead_url().await;
        let standby = FakeHost::start(false, || Standby::default().refusal("standby")).await;
        let leader = FakeHost::start(true, || Status::not_found("the leader answered")).await;
        let other = FakeHost::start(true, || Status::not_found("another answered")).await;
        let (url, _) = hosts(&[&dead, &standby.url, &leader.url, &other.url])
            .find_leader()
            .await
            .unwrap();
        assert_eq!(url, leader.url);
    }

    #[tokio::test]
    async fn without_a_leader_the_list_is_tried_again_until_the_wait_is_over() {
        let dead = dead_url().await;
        let standby = FakeHost::start(false, || Standby::default().refusal("standby")).await;
        let start = Instant::now();
        let e = hosts(&[&dead, &standby.url])
            .with_wait(Duration::from_millis(700))
            .find_leader()
            .await
            .unwrap_err();
        assert!(
            start.elapsed() >= Duration::from_millis(500),
            "{:?}",
            start.elapsed()
        );
        let text = e.to_string();
        assert!(
            text.starts_with("no host leads: none of the 2 hosts"),
            "{text}"
        );
        assert!(
            text.contains(&format!("\n  {dead}: cannot connect: ")),
            "{text}"
        );
        assert!(
            text.contains(&format!("\n  {}: NOT_SERVING (a standby)", standby.url)),
            "{text}"
        );
        // A leader elected while it looks is found.
        let list = hosts(&[&dead, &standby.url]);
        let found = tokio::spawn(async move { list.find_leader().await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        standby.serving(true).await;
        assert_eq!(found.await.unwrap().unwrap().0, standby.url);
    }

    #[tokio::test]
    async fn a_call_a_standby_refuses_goes_to_the_leader_it_names() {
        let leader = FakeHost::start(true, || Status::not_found("the leader answered")).await;
        let leader_url = leader.url.clone();
        // Its health still says it leads, but it refuses calls as a standby now.
        let deposed = FakeHost::start(true, move || {
            standby_of(&leader_url).refusal("host h2 is a standby")
        })
        .await;
        let channel = LeaderChannel::connect(hosts(&[&deposed.url]))
            .await
            .unwrap();
        assert_eq!(channel.url(), deposed.url);
        let st = get_status(&channel).await;
        assert_eq!(
            (st.code(), st.message()),
            (Code::NotFound, "the leader answered")
        );
        assert_eq!((deposed.calls(), leader.calls()), (1, 1));
        // Later calls go to the leader directly.
        assert_eq!(channel.url(), leader.url);
        get_status(&channel).await;
        assert_eq!((deposed.calls(), leader.calls()), (1, 2));
    }

    #[tokio::test]
    async fn a_refusal_that_names_no_leader_goes_on_over_the_list() {
        let a = FakeHost::start(true, || {
            Standby::default().refusal("host a is a standby; no host leads yet")
        })
        .await;
        let b = FakeHost::start(false, || Status::not_found("b answered")).await;
        let channel = LeaderChannel::connect(hosts(&[&a.url, &b.url]))
            .await
            .unwrap();
        assert_eq!(channel.url(), a.url);
        // a steps down, and a moment later b is elected.
        a.serving(false).await;
        let elect = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            b.serving(true).await;
        };
        let (st, ()) = tokio::join!(get_status(&channel), elect);
        assert_eq!((st.code(), st.message()), (Code::NotFound, "b answered"));
        assert_eq!(channel.url(), b.url);
        assert_eq!((a.calls(), b.calls()), (1, 1));
    }

    #[tokio::test]
    async fn refusals_are_followed_a_bounded_number_of_times() {
        // A host that says it leads and refuses every call as a standby.
        let confused = FakeHost::start(true, || Standby::default().refusal("confused")).await;
        let channel = LeaderChannel::connect(hosts(&[&confused.url]))
            .await
            .unwrap();
        let st = get_status(&channel).await;
        assert_eq!((st.code(), st.message()), (Code::Unavailable, "confused"));
        assert_eq!(Standby::of(&st), Some(Standby::default()));
        assert_eq!(confused.calls(), 1 + MAX_LEADER_HOPS);
    }

    #[tokio::test]
    async fn a_refusal_with_no_leader_left_is_unavailable_naming_the_hosts() {
        let a = FakeHost::start(true, || Standby::default().refusal("no host leads yet")).await;
        let list = hosts(&[&a.url]).with_wait(Duration::from_millis(300));
        let channel = LeaderChannel::connect(list).await.unwrap();
        a.serving(false).await;
        let st = get_status(&channel).await;
        assert_eq!(st.code(), Code::Unavailable);
        assert!(
            st.message()
                .starts_with("no host leads: none of the 1 hosts"),
            "{}",
            st.message()
        );
        assert!(st.message().contains(&a.url), "{}", st.message());
    }

    #[tokio::test]
    async fn a_leader_that_cannot_be_reached_is_looked_for_again() {
        let dead = dead_url().await;
        let b = FakeHost::start(true, || Status::not_found("b answered")).await;
        // As if the leader found earlier had gone since: its channel connects on first use.
        let lazy = endpoint(&dead, opts()).unwrap().connect_lazy();
        let channel = LeaderChannel {
            inner: Arc::new(Inner {
                hosts: Some(hosts(&[&dead, &b.url])),
                current: Mutex::new((dead.clone(), lazy)),
            }),
        };
        let st = get_status(&channel).await;
        assert_eq!((st.code(), st.message()), (Code::NotFound, "b answered"));
        assert_eq!(channel.url(), b.url);
    }

    #[tokio::test]
    async fn one_host_is_passed_through_as_it_answers() {
        let leader_url = dead_url().await;
        let standby = FakeHost::start(false, move || {
            standby_of(&leader_url).refusal("host h2 is a standby")
        })
        .await;
        let plain = crate::transport::connect(&standby.url, opts())
            .await
            .unwrap();
        let channel = LeaderChannel::single(&standby.url, plain);
        let st = get_status(&channel).await;
        assert_eq!(
            (st.code(), st.message()),
            (Code::Unavailable, "host h2 is a standby")
        );
        assert!(Standby::of(&st).is_some_and(|s| s.leader.as_deref() == Some("h1")));
        assert_eq!(standby.calls(), 1);
    }
}
