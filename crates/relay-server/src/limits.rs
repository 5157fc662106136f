//! Admission before the upgrade: connection caps (process, user, IP), the client address
//! behind trusted proxies, and the allowed browser origins.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{HeaderMap, header};

use crate::config::ForwardedHeader;
use ipnet::IpNet;
use parking_lot::Mutex;
use relay_core::{RateLimit, TokenBucket};
use relay_proto::UserId;
use std::time::{Duration, Instant};

/// The address of the TCP peer of a request. [`Relay`](crate::Relay) puts it in every
/// request's extensions; an embedder serving [`App`](crate::App) in its own server inserts it
/// the same way, or per-IP limits and forwarded-address handling do not apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteAddr(pub SocketAddr);

/// The client's IP: the TCP peer, or, when the peer is a trusted proxy, the nearest address
/// in the proxies' header (`X-Forwarded-For` or `Forwarded`, RFC 7239) that is not itself a
/// trusted proxy. Entries left of an untrusted one are ignored: anyone can write them, as
/// they can write the header the proxies do not use, which is never read.
pub(crate) fn client_ip(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
    header: ForwardedHeader,
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let chain = forwarded_chain(headers, header);
    let mut client = peer;
    for hop in chain.iter().rev() {
        match hop {
            Some(ip) => {
                client = *ip;
                if !is_trusted(ip) {
                    break;
                }
            }
            // An entry we cannot read (`unknown`, an obfuscated name): stop at the last
            // address we could.
            None => break,
        }
    }
    client
}

/// The addresses a request passed through, client first, from `header`.
fn forwarded_chain(headers: &HeaderMap, header: ForwardedHeader) -> Vec<Option<IpAddr>> {
    let joined = |name: header::HeaderName| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",")
    };
    if header == ForwardedHeader::Forwarded {
        return joined(header::FORWARDED)
            .split(',')
            .filter_map(|element| {
                element.split(';').find_map(|pair| {
                    let (key, value) = pair.split_once('=')?;
                    key.trim()
                        .eq_ignore_ascii_case("for")
                        .then(|| parse_node(value.trim().trim_matches('"')))
                })
            })
            .collect();
    }
    joined(http::HeaderName::from_static("x-forwarded-for"))
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(parse_node)
        .collect()
}

/// `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1` or `[2001:db8::1]:4711`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = node.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    node.strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|ip| ip.parse().ok())
}

/// Connection caps from the configuration; `0` means no limit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caps {
    pub(crate) process: usize,
    pub(crate) per_user: usize,
    pub(crate) per_ip: usize,
}

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Process,
    User,
    Ip,
}

impl Refusal {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Process => "max_connections",
            Self::User => "max_connections_per_user",
            Self::Ip => "max_connections_per_ip",
        }
    }
}

/// Open WebSocket sessions, counted per process, user and IP.
#[derive(Default)]
pub(crate) struct ConnectionCounts {
    total: AtomicUsize,
    users: Mutex<HashMap<UserId, usize>>,
    ips: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted session; its counts are given back when it drops.
pub(crate) struct Slot {
    counts: Arc<ConnectionCounts>,
    user: Option<UserId>,
    ip: Option<IpAddr>,
}

impl ConnectionCounts {
    /// Admits a session of `user` (none for a token about to be refused, or a service token,
    /// which user caps do not apply to) from `ip` (none where the address is unknown), or
    /// says which cap it would exceed.
    pub(crate) fn admit(
        self: &Arc<Self>,
        caps: Caps,
        user: Option<&UserId>,
        ip: Option<IpAddr>,
    ) -> Result<Slot, Refusal> {
        let over = |count: usize, cap: usize| cap != 0 && count >= cap;
        // Locks in one order (users, then IPs), each held only for a map update.
        let mut users = self.users.lock();
        let mut ips = self.ips.lock();
        if over(self.total.load(Ordering::Relaxed), caps.process) {
            return Err(Refusal::Process);
        }
        if let Some(user) = user
            && over(users.get(user).copied().unwrap_or(0), caps.per_user)
        {
            return Err(Refusal::User);
        }
        if let Some(ip) = ip
            && over(ips.get(&ip).copied().unwrap_or(0), caps.per_ip)
        {
            return Err(Refusal::Ip);
        }
        self.total.fetch_add(1, Ordering::Relaxed);
        if let Some(user) = user {
            *users.entry(user.clone()).or_default() += 1;
        }
        if let Some(ip) = ip {
            *ips.entry(ip).or_default() += 1;
        }
        Ok(Slot {
            counts: self.clone(),
            user: user.cloned(),
            ip,
        })
    }

    /// Sessions open now.
    #[cfg(test)]
    pub(crate) fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let counts = &self.counts;
        let mut users = counts.users.lock();
        let mut ips = counts.ips.lock();
        counts.total.fetch_sub(1, Ordering::Relaxed);
        if let Some(user) = &self.user {
            release(&mut users, user);
        }
        if let Some(ip) = &self.ip {
            release(&mut ips, ip);
        }
    }
}

/// Decrements a count, removing the entry at zero so that the maps hold only live keys.
fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(count) = map.get_mut(key) {
        *count -= 1;
        if *count == 0 {
            map.remove(key);
        }
    }
}

/// Token buckets by key (a user, a client IP), all under one limit. Buckets that refilled
/// completely are forgotten now and then, so the map holds only recently active keys.
pub(crate) struct KeyedBuckets<K> {
    limit: Option<RateLimit>,
    state: Mutex<Keyed<K>>,
}

struct Keyed<K, V = TokenBucket> {
    buckets: HashMap<K, V>,
    /// Sweep the map when it grows to this size.
    sweep_at: usize,
}

/// Map size below which no sweep runs.
const MIN_SWEEP: usize = 1024;

impl<K: std::hash::Hash + Eq, V> Keyed<K, V> {
    /// Once the map has doubled since the last sweep, keeps only the entries `live` says are
    /// still needed: amortised O(1) per insert, and the map stays proportional to them.
    fn sweep(&mut self, mut live: impl FnMut(&mut V) -> bool) {
        if self.buckets.len() >= self.sweep_at {
            self.buckets.retain(|_, value| live(value));
            self.sweep_at = (self.buckets.len() * 2).max(MIN_SWEEP);
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone> KeyedBuckets<K> {
    /// Buckets under `limit`; `None`: unlimited.
    pub(crate) fn new(limit: Option<RateLimit>) -> Self {
        Self {
            limit,
            state: Mutex::new(Keyed {
                buckets: HashMap::new(),
                sweep_at: MIN_SWEEP,
            }),
        }
    }

    /// Takes a token for `key`; `Err(retry_after_secs)` when it has none.
    pub(crate) fn take(&self, key: &K) -> Result<(), u64> {
        self.with(key, |bucket, limit, now| {
            if bucket.take(limit, now) {
                Ok(())
            } else {
                Err(bucket.retry_after_secs(limit))
            }
        })
    }

    /// Whether `key` has a token now (without taking it); `Err(retry_after_secs)` if not.
    pub(crate) fn check(&self, key: &K) -> Result<(), u64> {
        self.with(key, |bucket, limit, now| {
            if bucket.has_token(limit, now) {
                Ok(())
            } else {
                Err(bucket.retry_after_secs(limit))
            }
        })
    }

    fn with(
        &self,
        key: &K,
        f: impl FnOnce(&mut TokenBucket, RateLimit, Instant) -> Result<(), u64>,
    ) -> Result<(), u64> {
        let Some(limit) = self.limit else {
            return Ok(());
        };
        let now = Instant::now();
        let mut state = self.state.lock();
        state.sweep(|bucket| !bucket.is_full(limit, now));
        let bucket = state
            .buckets
            .entry(key.clone())
            .or_insert_with(|| TokenBucket::full(limit, now));
        f(bucket, limit, now)
    }
}

/// Keys (users) barred from reconnecting for a while after their connection was closed for
/// abuse; expired entries are swept now and then.
pub(crate) struct Cooldowns<K> {
    length: Duration,
    state: Mutex<Keyed<K, Instant>>,
}

impl<K: std::hash::Hash + Eq> Cooldowns<K> {
    /// Cooldowns of `length`; zero turns them off.
    pub(crate) fn new(length: Duration) -> Self {
        Self {
            length,
            state: Mutex::new(Keyed {
                buckets: HashMap::new(),
                sweep_at: MIN_SWEEP,
            }),
        }
    }

    /// Bars `key` for the cooldown's length from now.
    pub(crate) fn start(&self, key: K) {
        if self.length.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut state = self.state.lock();
        state.sweep(|until| *until > now);
        state.buckets.insert(key, now + self.length);
    }

    /// Whole seconds (at least 1) until `key` may come back, if it is barred.
    pub(crate) fn remaining(&self, key: &K) -> Option<u64> {
        let until = *self.state.lock().buckets.get(key)?;
        let left = until.checked_duration_since(Instant::now())?;
        Some(left.as_secs().max(1))
    }
}

/// The browser origins allowed to open WebSockets and call the REST API: exact origins
/// (`https://app.example.com`) and subdomain patterns (`https://*.example.com`, or
/// `*.example.com` for any scheme). Unset: any origin.
#[derive(Debug, Clone, Default)]
pub(crate) struct AllowedOrigins {
    /// `None`: any origin.
    rules: Option<Vec<OriginRule>>,
}

#[derive(Debug, Clone)]
enum OriginRule {
    Exact(String),
    /// A scheme (or any) and a host suffix starting with `.`.
    Subdomains {
        scheme: Option<String>,
        suffix: String,
    },
}

impl AllowedOrigins {
    /// Parses the configured list; `None` allows any origin.
    pub(crate) fn new(list: Option<&[String]>) -> Result<Self, String> {
        let Some(list) = list else {
            return Ok(Self { rules: None });
        };
        let rules = list
            .iter()
            .map(|entry| {
                let entry = entry.trim().trim_end_matches('/').to_ascii_lowercase();
                let (scheme, host) = match entry.split_once("://") {
                    Some((scheme, host)) => (Some(scheme.to_owned()), host),
                    None => (None, entry.as_str()),
                };
                if let Some(suffix) = host.strip_prefix("*.") {
                    if suffix.is_empty() || suffix.contains('*') {
                        return Err(format!("allowed_origins: bad pattern {entry:?}"));
                    }
                    return Ok(OriginRule::Subdomains {
                        scheme,
                        suffix: format!(".{suffix}"),
                    });
                }
                if scheme.is_none() || host.is_empty() || host.contains(['*', '/']) {
                    return Err(format!(
                        "allowed_origins: {entry:?} is neither an origin (https://app.example.com) nor a pattern (*.example.com)"
                    ));
                }
                Ok(OriginRule::Exact(entry))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { rules: Some(rules) })
    }

    /// Whether any origin is allowed.
    pub(crate) fn any(&self) -> bool {
        self.rules.is_none()
    }

    /// Whether a request with this `Origin` header may proceed.
    pub(crate) fn allows(&self, origin: &str) -> bool {
        let Some(rules) = &self.rules else {
            return true;
        };
        let origin = origin.trim().to_ascii_lowercase();
        let Some((scheme, host)) = origin.split_once("://") else {
            return false;
        };
        rules.iter().any(|rule| match rule {
            OriginRule::Exact(exact) => *exact == origin,
            OriginRule::Subdomains {
                scheme: want,
                suffix,
            } => {
                want.as_deref().is_none_or(|want| want == scheme)
                    && host.len() > suffix.len()
                    && host.ends_with(suffix.as_str())
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_addresses_count_only_behind_a_trusted_proxy() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let xff = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.0.0.9")]);
        let (x, fwd) = (ForwardedHeader::XForwardedFor, ForwardedHeader::Forwarded);
        // From an untrusted peer the header is ignored.
        assert_eq!(
            client_ip(ip("198.51.100.1"), &xff, &trusted, x),
            ip("198.51.100.1")
        );
        // From a trusted proxy: the nearest untrusted hop, not the forgeable leftmost one.
        assert_eq!(
            client_ip(ip("10.0.0.1"), &xff, &trusted, x),
            ip("203.0.113.7")
        );
        // The header the proxies do not write is the client's own: never read.
        let both = headers(&[
            ("x-forwarded-for", "203.0.113.7"),
            ("forwarded", "for=127.0.0.1"),
        ]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &both, &trusted, x),
            ip("203.0.113.7")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), &xff, &trusted, fwd),
            ip("10.0.0.1")
        );
        let forwarded = headers(&[(
            "forwarded",
            "for=6.6.6.6, for=\"[2001:db8::7]:4711\";proto=https, for=10.1.1.1",
        )]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &forwarded, &trusted, fwd),
            ip("2001:db8::7")
        );
        let unknown = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &unknown, &trusted, fwd),
            ip("10.0.0.1")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), &HeaderMap::new(), &trusted, x),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn caps_count_and_give_back() {
        let counts = Arc::new(ConnectionCounts::default());
        let caps = Caps {
            process: 3,
            per_user: 2,
            per_ip: 2,
        };
        let alice = UserId::parse("alice").unwrap();
        let a = ip("192.0.2.1");
        let first = counts.admit(caps, Some(&alice), Some(a)).unwrap();
        let _second = counts.admit(caps, Some(&alice), None).unwrap();
        assert_eq!(
            counts.admit(caps, Some(&alice), None).err(),
            Some(Refusal::User)
        );
        let _third = counts.admit(caps, None, Some(a)).unwrap();
        assert_eq!(counts.admit(caps, None, None).err(), Some(Refusal::Process));
        drop(first);
        assert_eq!(counts.total(), 2);
        assert_eq!(counts.admit(caps, None, Some(a)).err(), None);
        assert!(counts.users.lock().len() == 1 && counts.ips.lock().len() == 1);
    }

    #[test]
    fn keyed_buckets_limit_each_key_and_forget_idle_ones() {
        let buckets = KeyedBuckets::new(Some(RateLimit::new(1, 2)));
        assert!(buckets.take(&1).is_ok() && buckets.take(&1).is_ok());
        assert_eq!(buckets.take(&1), Err(1));
        assert_eq!(buckets.check(&1), Err(1));
        assert!(buckets.take(&2).is_ok());
        // Thousands of one-off keys do not pile up: full buckets are swept.
        for key in 3..10_000 {
            assert!(buckets.check(&key).is_ok());
        }
        assert!(buckets.state.lock().buckets.len() <= 2 * MIN_SWEEP);
        assert!(KeyedBuckets::new(None).take(&1).is_ok());
    }

    #[test]
    fn cooldowns_bar_a_key_until_they_expire() {
        let cooldowns = Cooldowns::new(Duration::from_millis(50));
        cooldowns.start("mallory");
        assert_eq!(cooldowns.remaining(&"mallory"), Some(1));
        assert_eq!(cooldowns.remaining(&"alice"), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(cooldowns.remaining(&"mallory"), None);
        let off = Cooldowns::new(Duration::ZERO);
        off.start("mallory");
        assert_eq!(off.remaining(&"mallory"), None);
    }

    #[test]
    fn origins_match_exactly_or_by_subdomain() {
        let any = AllowedOrigins::new(None).unwrap();
        assert!(any.allows("https://evil.test"));
        let list = [
            "https://app.example.com".to_owned(),
            "https://*.example.org".to_owned(),
            "*.example.net".to_owned(),
        ];
        let origins = AllowedOrigins::new(Some(&list)).unwrap();
        assert!(origins.allows("https://app.example.com"));
        assert!(origins.allows("HTTPS://App.Example.com"));
        assert!(!origins.allows("http://app.example.com"));
        assert!(!origins.allows("https://app.example.com.evil.test"));
        assert!(origins.allows("https://a.b.example.org"));
        assert!(!origins.allows("https://example.org"));
        assert!(!origins.allows("https://evilexample.org"));
        assert!(!origins.allows("http://a.example.org"));
        assert!(origins.allows("http://a.example.net"));
        assert!(!origins.allows("null"));
        assert!(AllowedOrigins::new(Some(&["example.com".to_owned()])).is_err());
        assert!(AllowedOrigins::new(Some(&["https://*.".to_owned()])).is_err());
    }
}
