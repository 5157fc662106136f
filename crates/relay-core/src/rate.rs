//! Rate limits: token buckets per connection for `publish`, `subscribe` and `signal` frames.
//!
//! A frame over its rate gets `error {code: "rate_limited"}` and has no other effect. A
//! connection that keeps sending past `close_multiple` times its rate, or a whole burst past
//! its burst, is closed with 4029. A connection's buckets are allocated on its first limited frame, so idle
//! connections pay nothing, and the fan-out path never touches them.

use std::time::Instant;

/// A rate: `per_second` tokens refill a bucket of `burst` tokens; each frame takes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained frames per second.
    pub per_second: u32,
    /// Frames allowed at once after a quiet period.
    pub burst: u32,
}

impl RateLimit {
    /// `per_second` frames a second with bursts of `burst`.
    pub const fn new(per_second: u32, burst: u32) -> Self {
        Self { per_second, burst }
    }

    /// The limit past which a connection is closed: `factor` times the rate, and twice the
    /// burst (a client that ignores `rate_limited` for a whole burst is not slowing down).
    fn hard(self, factor: u32) -> Self {
        Self {
            per_second: self.per_second.saturating_mul(factor),
            burst: self.burst.saturating_mul(2),
        }
    }
}

/// The frame limits of one kind of client: `None` leaves a kind unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// `publish` frames.
    pub publish: Option<RateLimit>,
    /// `subscribe` frames.
    pub subscribe: Option<RateLimit>,
    /// `signal` frames.
    pub signal: Option<RateLimit>,
    /// Every frame, of any type (including ones that do not decode and binary ones); counted
    /// per connection, never per namespace.
    pub frames: Option<RateLimit>,
}

impl FrameLimits {
    /// No limits.
    pub const UNLIMITED: Self = Self {
        publish: None,
        subscribe: None,
        signal: None,
        frames: None,
    };

    /// The defaults for user tokens: a chat burst, typing indicators at keystroke rate, a
    /// reconnect resubscribing to hundreds of channels and an ICE candidate burst all pass;
    /// a flood does not.
    pub const USERS: Self = Self {
        publish: Some(RateLimit::new(50, 200)),
        subscribe: Some(RateLimit::new(100, 1000)),
        signal: Some(RateLimit::new(50, 200)),
        frames: Some(RateLimit::new(200, 1000)),
    };

    /// The defaults for service tokens: backends publishing thousands of messages a second.
    pub const SERVICES: Self = Self {
        publish: Some(RateLimit::new(20_000, 40_000)),
        subscribe: Some(RateLimit::new(2_000, 10_000)),
        signal: Some(RateLimit::new(20_000, 40_000)),
        frames: Some(RateLimit::new(50_000, 100_000)),
    };

    pub(crate) fn get(&self, kind: FrameKind) -> Option<RateLimit> {
        match kind {
            FrameKind::Publish => self.publish,
            FrameKind::Subscribe => self.subscribe,
            FrameKind::Signal => self.signal,
            FrameKind::Any => self.frames,
        }
    }
}

impl Default for FrameLimits {
    fn default() -> Self {
        Self::USERS
    }
}

/// The kinds of frame that are rate-limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameKind {
    Publish,
    Subscribe,
    Signal,
    /// Any frame at all.
    Any,
}

impl FrameKind {
    fn index(self) -> usize {
        self as usize
    }
}

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Within the rate.
    Allow,
    /// Over the rate: refuse this frame.
    Refuse,
    /// Far over the rate, repeatedly: close the connection (4029).
    Close,
}

/// A token bucket: refills at a [`RateLimit`]'s rate up to its burst; each event takes one
/// token. The limit is passed on each call, so that a bucket costs 16 bytes and many can
/// share one configuration.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A bucket holding its whole burst.
    pub fn full(limit: RateLimit, now: Instant) -> Self {
        Self {
            tokens: f64::from(limit.burst.max(1)),
            last: now,
        }
    }

    fn refill(&mut self, limit: RateLimit, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        let burst = f64::from(limit.burst.max(1));
        self.tokens = (self.tokens + elapsed * f64::from(limit.per_second)).min(burst);
    }

    /// Takes a token if there is one.
    pub fn take(&mut self, limit: RateLimit, now: Instant) -> bool {
        self.refill(limit, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether a token is available now, without taking it.
    pub fn has_token(&mut self, limit: RateLimit, now: Instant) -> bool {
        self.refill(limit, now);
        self.tokens >= 1.0
    }

    /// Whether the bucket has refilled completely (it can be forgotten: a new one is the
    /// same).
    pub fn is_full(&mut self, limit: RateLimit, now: Instant) -> bool {
        self.refill(limit, now);
        self.tokens >= f64::from(limit.burst.max(1))
    }

    /// Whole seconds until the next token, at least 1 (for `Retry-After`).
    pub fn retry_after_secs(&self, limit: RateLimit) -> u64 {
        let missing = (1.0 - self.tokens).max(0.0);
        let rate = f64::from(limit.per_second.max(1));
        ((missing / rate).ceil() as u64).max(1)
    }
}

/// One kind's pair of buckets: the rate itself, and `close_multiple` times it, which every
/// attempt draws on (allowed or not).
#[derive(Debug, Clone, Copy)]
struct Pair {
    rate: TokenBucket,
    hard: TokenBucket,
}

/// The buckets of one connection: per kind, for the connection's limits, and per namespace
/// with limits of its own (a fixed set, from the configuration).
#[derive(Debug, Default)]
pub(crate) struct Limiter {
    kinds: [Option<Pair>; 4],
    namespaces: Vec<(Box<str>, [Option<Pair>; 4])>,
}

impl Limiter {
    /// Charges one `kind` frame under `limits` (the namespace's own when `namespace` is
    /// given, else the connection's).
    pub(crate) fn check(
        &mut self,
        kind: FrameKind,
        limits: &FrameLimits,
        namespace: Option<&str>,
        close_multiple: u32,
    ) -> Verdict {
        let Some(limit) = limits.get(kind) else {
            return Verdict::Allow;
        };
        let pairs = match namespace {
            None => &mut self.kinds,
            Some(ns) => match self.namespaces.iter().position(|(n, _)| &**n == ns) {
                Some(i) => &mut self.namespaces[i].1,
                None => {
                    self.namespaces.push((ns.into(), [None; 4]));
                    let last = self.namespaces.len() - 1;
                    &mut self.namespaces[last].1
                }
            },
        };
        let now = Instant::now();
        let hard_limit = limit.hard(close_multiple.max(1));
        let pair = pairs[kind.index()].get_or_insert_with(|| Pair {
            rate: TokenBucket::full(limit, now),
            hard: TokenBucket::full(hard_limit, now),
        });
        if !pair.hard.take(hard_limit, now) {
            Verdict::Close
        } else if pair.rate.take(limit, now) {
            Verdict::Allow
        } else {
            Verdict::Refuse
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_frames_are_refused_then_the_connection_is_closed() {
        let limits = FrameLimits {
            publish: Some(RateLimit::new(1, 5)),
            ..FrameLimits::UNLIMITED
        };
        let mut limiter = Limiter::default();
        let verdicts: Vec<Verdict> = (0..12)
            .map(|_| limiter.check(FrameKind::Publish, &limits, None, 4))
            .collect();
        // The burst, then a burst's worth refused, then closed.
        assert!(verdicts[..5].iter().all(|v| *v == Verdict::Allow));
        assert!(verdicts[5..10].iter().all(|v| *v == Verdict::Refuse));
        assert_eq!(verdicts[10], Verdict::Close);
        // Other kinds are not limited here.
        assert_eq!(
            limiter.check(FrameKind::Subscribe, &limits, None, 4),
            Verdict::Allow
        );
    }

    #[test]
    fn namespaces_with_their_own_limits_have_their_own_buckets() {
        let strict = FrameLimits {
            publish: Some(RateLimit::new(1, 1)),
            ..FrameLimits::UNLIMITED
        };
        let mut limiter = Limiter::default();
        assert_eq!(
            limiter.check(FrameKind::Publish, &strict, Some("chat"), 4),
            Verdict::Allow
        );
        assert_eq!(
            limiter.check(FrameKind::Publish, &strict, Some("chat"), 4),
            Verdict::Refuse
        );
        assert_eq!(
            limiter.check(FrameKind::Publish, &strict, Some("feed"), 4),
            Verdict::Allow
        );
        assert_eq!(
            limiter.check(FrameKind::Publish, &strict, None, 4),
            Verdict::Allow
        );
    }

    #[test]
    fn tokens_refill_at_the_rate() {
        let limit = RateLimit::new(1000, 1);
        let start = Instant::now();
        let mut bucket = TokenBucket::full(limit, start);
        assert!(bucket.take(limit, start));
        assert!(!bucket.take(limit, start));
        assert!(bucket.take(limit, start + std::time::Duration::from_millis(2)));
    }
}
