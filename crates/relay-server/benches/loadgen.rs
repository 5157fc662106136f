//! The load generator of `cargo xtask bench`, and the minimal reference relay it is compared
//! with. Run through `cargo xtask bench <scenario>`, which pins the server to one core and this
//! generator to the other; see `docs/performance.md`.
//!
//! ```text
//! loadgen fanout --addr A [--publish-addr B] [--publishers N] [--secret S] [--channel C] [--ephemeral] --subscribers 1000 --payload 100 --rates 1000,2000 ...
//! loadgen idle --addr A --secret S --connections 10000
//! loadgen abuse --addr A --secret S [--subscribers 1000] [--abusers 200] [--rate 100] [--step-secs 10]
//! loadgen latest --addr A --secret S [--rate 500] [--payload 10000] [--step-secs 10]
//! loadgen baseline-server [--listen 127.0.0.1:0]
//! ```
//!
//! The generator must stay cheap per delivery, because it shares the machine with the server:
//! it speaks WebSocket over raw sockets (handshake by hand, frames parsed in place), finds the
//! `"t":` timestamp in a message by a byte search instead of parsing JSON, and keeps counters
//! and a latency histogram in atomics. It reports its own CPU use next to the server's, so a
//! generator-bound run is visible.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use relay_server::frame::{self, FrameHead};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------------------------
// Command line

struct Flags(BTreeMap<String, String>);

impl Flags {
    fn parse(args: &[String]) -> Self {
        let mut map = BTreeMap::new();
        let mut it = args.iter().peekable();
        while let Some(arg) = it.next() {
            if let Some(name) = arg.strip_prefix("--") {
                let value = match it.peek() {
                    Some(v) if !v.starts_with("--") => it.next().unwrap().clone(),
                    _ => "true".to_owned(),
                };
                map.insert(name.to_owned(), value);
            }
        }
        Self(map)
    }

    fn get<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        self.0
            .get(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    fn text(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    fn list(&self, name: &str, default: &[u64]) -> Vec<u64> {
        match self.0.get(name) {
            Some(v) => v.split(',').filter_map(|x| x.trim().parse().ok()).collect(),
            None => default.to_vec(),
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let Some(command) = args.first().cloned() else {
        eprintln!("usage: loadgen <fanout|idle|baseline-server> [flags]");
        std::process::exit(2);
    };
    let flags = Flags::parse(&args[1..]);
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    match command.as_str() {
        "fanout" => runtime.block_on(fanout(&flags)),
        "idle" => runtime.block_on(idle(&flags)),
        "abuse" => runtime.block_on(abuse(&flags)),
        "latest" => runtime.block_on(latest(&flags)),
        "baseline-server" => runtime.block_on(baseline_server(&flags)),
        other => {
            eprintln!("unknown command {other}");
            std::process::exit(2);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Measurement helpers

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Clock ticks per second of /proc/*/stat (USER_HZ; 100 on Linux).
const TICKS: f64 = 100.0;

/// CPU seconds used by a process (utime + stime).
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS)
}

/// Resident memory of a process, in bytes.
fn rss_bytes(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A log-linear latency histogram in microseconds (16 sub-buckets per power of two), in
/// atomics so that every reader task records without locks.
struct Histogram {
    buckets: Vec<AtomicU64>,
    max: AtomicU64,
}

impl Histogram {
    fn new() -> Self {
        Self {
            buckets: (0..64 * 16).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
        }
    }

    fn index(v: u64) -> usize {
        if v < 16 {
            return v as usize;
        }
        let exp = 63 - v.leading_zeros() as usize; // >= 4
        let mantissa = ((v >> (exp - 4)) & 0xf) as usize;
        (exp - 3) * 16 + mantissa
    }

    fn upper(index: usize) -> u64 {
        if index < 16 {
            return index as u64;
        }
        let exp = index / 16 + 3;
        let mantissa = (index % 16) as u64;
        ((16 + mantissa + 1) << (exp - 4)) - 1
    }

    fn record(&self, v: u64) {
        self.buckets[Self::index(v).min(self.buckets.len() - 1)].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(v, Ordering::Relaxed);
    }

    fn reset(&self) {
        for b in &self.buckets {
            b.store(0, Ordering::Relaxed);
        }
        self.max.store(0, Ordering::Relaxed);
    }

    /// Value at quantile `q` (upper bound of its bucket), in microseconds.
    fn quantile(&self, q: f64) -> u64 {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let target = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                return Self::upper(i).min(self.max.load(Ordering::Relaxed));
            }
        }
        self.max.load(Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------------------------------------
// A minimal WebSocket client over a raw socket

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

struct RawWs {
    stream: TcpStream,
    buf: BytesMut,
}

/// A frame parsed in place: opcode and payload range within the buffer.
struct Frame {
    opcode: u8,
    start: usize,
    end: usize,
}

impl RawWs {
    async fn connect(addr: SocketAddr, token: Option<&str>) -> std::io::Result<Self> {
        Self::connect_from(addr, None, token).await
    }

    /// Connects from a chosen loopback source address. Spreading many connections over
    /// several source addresses keeps the kernel's ephemeral-port search cheap (past half of
    /// one address's port range, connect() slows down sharply).
    async fn connect_from(
        addr: SocketAddr,
        source: Option<std::net::IpAddr>,
        token: Option<&str>,
    ) -> std::io::Result<Self> {
        let mut stream = match source {
            Some(ip) => {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(ip, 0))?;
                socket.connect(addr).await?
            }
            None => TcpStream::connect(addr).await?,
        };
        stream.set_nodelay(true)?;
        let query = token.map(|t| format!("?token={t}")).unwrap_or_default();
        let request = format!(
            "GET /ws{query} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buf = BytesMut::with_capacity(4096);
        loop {
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(std::io::Error::other("closed during the handshake"));
            }
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                if !buf.starts_with(b"HTTP/1.1 101") {
                    return Err(std::io::Error::other("upgrade refused"));
                }
                let _ = buf.split_to(end + 4);
                return Ok(Self { stream, buf });
            }
        }
    }

    /// Parses the next complete server frame at the front of the buffer.
    fn parse(&self) -> Option<Frame> {
        let head = FrameHead::parse(&self.buf)?;
        (self.buf.len() >= head.frame_len()).then_some(Frame {
            opcode: head.opcode,
            start: head.header_len,
            end: head.frame_len(),
        })
    }

    fn consume(&mut self, frame: &Frame) {
        bytes::Buf::advance(&mut self.buf, frame.end);
    }

    /// Reads more bytes; `Ok(false)` on EOF.
    async fn fill(&mut self) -> std::io::Result<bool> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        Ok(self.stream.read_buf(&mut self.buf).await? > 0)
    }

    /// Waits for the next text frame, answering pings on the way.
    async fn next_text(&mut self) -> std::io::Result<Bytes> {
        loop {
            while let Some(frame) = self.parse() {
                let payload = Bytes::copy_from_slice(&self.buf[frame.start..frame.end]);
                self.consume(&frame);
                match frame.opcode {
                    1 => return Ok(payload),
                    9 => self.stream.write_all(&client_frame(0xA, &payload)).await?,
                    8 => return Err(std::io::Error::other("closed by the server")),
                    _ => {}
                }
            }
            if !self.fill().await? {
                return Err(std::io::Error::other("eof"));
            }
        }
    }
}

/// A masked client frame (mask key zero: valid, and free to apply).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    frame::masked(&mut out, opcode, payload, [0; 4]);
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Finds `"t":` with SIMD; built once.
static T_FIELD: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"t\":"));

/// The `"t":<digits>` timestamp of a message frame.
fn timestamp(payload: &[u8]) -> Option<u64> {
    let at = T_FIELD.find(payload)? + 4;
    let mut v = 0u64;
    let mut any = false;
    for &c in &payload[at..] {
        if !c.is_ascii_digit() {
            break;
        }
        v = v * 10 + u64::from(c - b'0');
        any = true;
    }
    any.then_some(v)
}

/// A token for `user`; publishers (`publisher…`) get service tokens, as the backends that
/// feed a fan-out would, so they run under the service rate limits.
fn token(flags: &Flags, user: &str) -> Option<String> {
    let secret = flags.text("secret")?;
    let auth = relay_server::Authenticator::from_config(&relay_server::AuthConfig {
        secret: Some(secret.to_owned()),
        ..Default::default()
    })
    .ok()?;
    let mut claims = relay_server::Claims::new(user, Duration::from_secs(24 * 3600));
    if user.starts_with("publisher") {
        claims.role = Some("service".into());
    }
    auth.mint(&claims)
}

async fn subscribe(ws: &mut RawWs, channel: &str) -> std::io::Result<()> {
    let welcome = ws.next_text().await?;
    if find(&welcome, b"\"welcome\"").is_none() {
        return Err(std::io::Error::other("no welcome"));
    }
    let frame = format!(r#"{{"type":"subscribe","channel":"{channel}"}}"#);
    ws.stream
        .write_all(&client_frame(1, frame.as_bytes()))
        .await?;
    loop {
        let reply = ws.next_text().await?;
        if find(&reply, b"\"subscribed\"").is_some() {
            return Ok(());
        }
        if find(&reply, b"\"error\"").is_some() {
            return Err(std::io::Error::other(
                String::from_utf8_lossy(&reply).into_owned(),
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// fanout

struct Counters {
    delivered: AtomicU64,
    closed: AtomicUsize,
    latency: Histogram,
}

impl Counters {
    fn new() -> Self {
        Self {
            delivered: AtomicU64::new(0),
            closed: AtomicUsize::new(0),
            latency: Histogram::new(),
        }
    }
}

/// The padding that makes a publish payload `{"t":<16 digits>,"p":"xxx…"}` `bytes` long.
fn padding(bytes: usize) -> String {
    "x".repeat(bytes.saturating_sub(r#"{"t":1234567890123456,"p":""}"#.len()))
}

async fn subscriber_loop(mut ws: RawWs, counters: Arc<Counters>) {
    loop {
        // One clock read and one counter update per read, not per frame.
        let now = now_micros();
        let mut delivered = 0;
        while let Some(frame) = ws.parse() {
            let payload = &ws.buf[frame.start..frame.end];
            match frame.opcode {
                1 => {
                    if let Some(t) = timestamp(payload) {
                        delivered += 1;
                        counters.latency.record(now.saturating_sub(t));
                    }
                }
                9 => {
                    let pong = client_frame(0xA, payload);
                    if ws.stream.write_all(&pong).await.is_err() {
                        counters.closed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
                8 => {
                    counters.closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                _ => {}
            }
            ws.consume(&frame);
        }
        counters.delivered.fetch_add(delivered, Ordering::Relaxed);
        match ws.fill().await {
            Ok(true) => {}
            _ => {
                counters.closed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

async fn fanout(flags: &Flags) {
    let addr: SocketAddr = flags.text("addr").expect("--addr").parse().unwrap();
    let subscribers = flags.get("subscribers", 1000usize);
    let payload_bytes = flags.get("payload", 100usize);
    let rates = flags.list("rates", &[250, 500, 1000, 1500, 2000, 2500, 3000]);
    let step = Duration::from_secs(flags.get("step-secs", 3u64));
    let server_pid = flags.text("server-pid").unwrap_or("0").to_owned();
    let json = flags.text("json").is_some();
    let label = flags.text("label").unwrap_or("relay").to_owned();
    let channel = flags.text("channel").unwrap_or("bench:fanout").to_owned();
    let channel = channel.as_str();
    // `--ephemeral`: live-only publishes (not stored, no seq), as typing or cursors.
    let kind = if flags.text("ephemeral").is_some() {
        r#","ephemeral":true"#
    } else {
        ""
    };

    let counters = Arc::new(Counters::new());
    let started = Instant::now();
    connect_subscribers(addr, flags, subscribers, channel, &counters).await;
    let setup = started.elapsed();
    eprintln!(
        "{label}: {subscribers} subscribers ready in {:.2}s",
        setup.as_secs_f64()
    );

    // Another node of a cluster, for cross-node runs; the subscribers' node by default.
    let publish_addr: SocketAddr = flags
        .text("publish-addr")
        .map_or(addr, |a| a.parse().expect("--publish-addr"));
    // Several publisher connections share the rate round-robin: the server handles one
    // connection's persistent publishes one after the other (each waits for its commit), so
    // one connection caps persistent publishes at one per commit round trip.
    let publishers = flags.get("publishers", 1usize).max(1);
    let mut writers = connect_publishers(publish_addr, flags, publishers).await;

    // A publish frame of `payload_bytes` of payload: {"t":<16 digits>,"p":"xxx…"}.
    let padding = padding(payload_bytes);
    let mut best: Option<(u64, f64)> = None;
    if !json {
        println!(
            "{:<9} {:>8} {:>13} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>8}",
            "relay",
            "rate/s",
            "deliveries/s",
            "delivered",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "srv cpu",
            "srv rss",
            "gen cpu"
        );
    }
    for rate in rates {
        let Some(step) = publish_step(
            &mut writers,
            channel,
            kind,
            rate,
            step,
            &padding,
            &counters,
            subscribers,
            &server_pid,
        )
        .await
        else {
            break;
        };
        let Step {
            fraction,
            per_sec,
            p50,
            p90,
            p99,
            max,
            srv_cpu,
            gen_cpu,
            rss,
        } = step;
        let pass = fraction >= 0.99 && p99 <= 100.0;
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "scenario": "fanout", "relay": label, "subscribers": subscribers,
                    "payload_bytes": payload_bytes, "rate": rate, "deliveries_per_sec": per_sec.round(),
                    "delivered_fraction": fraction, "p50_ms": p50, "p90_ms": p90, "p99_ms": p99,
                    "max_ms": max, "server_cpu_pct": srv_cpu, "server_rss_bytes": rss,
                    "generator_cpu_pct": gen_cpu, "closed_subscribers": counters.closed.load(Ordering::Relaxed),
                    "pass": pass,
                })
            );
        } else {
            println!(
                "{label:<9} {rate:>8} {per_sec:>13.0} {:>8.2}% {p50:>8.2} {p90:>8.2} {p99:>8.2} {max:>8.2} {:>8.0}% {:>7.1}MB {:>7.0}%",
                fraction * 100.0,
                srv_cpu.unwrap_or(f64::NAN),
                rss as f64 / 1e6,
                gen_cpu.unwrap_or(f64::NAN),
            );
        }
        if !pass {
            break;
        }
        best = Some((rate, per_sec));
    }
    match best {
        Some((rate, per_sec)) if json => println!(
            "{}",
            serde_json::json!({"scenario": "fanout-summary", "relay": label, "best_rate": rate, "best_deliveries_per_sec": per_sec.round()})
        ),
        Some((rate, per_sec)) => {
            println!("{label}: highest passing step {rate} publishes/s = {per_sec:.0} deliveries/s")
        }
        None => println!("{label}: no step passed"),
    }
}

/// Connects `n` subscribers (users `sub0`…) to `channel`, each read by a [`subscriber_loop`],
/// from 16 loopback source addresses (127.0.0.2 to 127.0.0.17), as if from many hosts.
async fn connect_subscribers(
    addr: SocketAddr,
    flags: &Flags,
    n: usize,
    channel: &str,
    counters: &Arc<Counters>,
) {
    for i in 0..n {
        let source = std::net::IpAddr::from([127, 0, 0, 2 + (i % 16) as u8]);
        let mut ws = RawWs::connect_from(
            addr,
            Some(source),
            token(flags, &format!("sub{i}")).as_deref(),
        )
        .await
        .unwrap();
        subscribe(&mut ws, channel).await.unwrap();
        tokio::spawn(subscriber_loop(ws, counters.clone()));
    }
}

/// Connects `n` publishers (service tokens); their acks are read and discarded.
async fn connect_publishers(
    addr: SocketAddr,
    flags: &Flags,
    n: usize,
) -> Vec<tokio::net::tcp::OwnedWriteHalf> {
    let mut writers = Vec::with_capacity(n);
    for p in 0..n {
        let mut publisher = RawWs::connect(addr, token(flags, &format!("publisher{p}")).as_deref())
            .await
            .unwrap();
        let _ = publisher.next_text().await.unwrap(); // welcome
        let (mut reader, writer) = publisher.stream.into_split();
        tokio::spawn(async move {
            // Acks and pings: read and discard (the server's pings only need an answer after
            // 2 heartbeats of silence, and the publisher is never silent).
            let mut sink = vec![0u8; 64 * 1024];
            while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
        });
        writers.push(writer);
    }
    writers
}

/// What one publishing step measured.
struct Step {
    fraction: f64,
    per_sec: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    srv_cpu: Option<f64>,
    gen_cpu: Option<f64>,
    rss: u64,
}

/// Publishes `rate` messages a second to `channel` for `step` (round-robin over `writers`),
/// waits (bounded) for the deliveries to `subscribers`, and measures; `None` when a publisher
/// connection was lost.
#[allow(clippy::too_many_arguments)]
async fn publish_step(
    writers: &mut [tokio::net::tcp::OwnedWriteHalf],
    channel: &str,
    kind: &str,
    rate: u64,
    step: Duration,
    padding: &str,
    counters: &Counters,
    subscribers: usize,
    server_pid: &str,
) -> Option<Step> {
    counters.delivered.store(0, Ordering::Relaxed);
    counters.latency.reset();
    let publishers = writers.len();
    let (srv0, gen0) = (cpu_seconds(server_pid), cpu_seconds("self"));
    let t0 = Instant::now();
    let total = rate * step.as_secs();
    let mut sent = 0u64;
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut batches: Vec<Vec<u8>> = (0..publishers)
        .map(|_| Vec::with_capacity(16 * 1024))
        .collect();
    while sent < total {
        ticker.tick().await;
        let due = ((t0.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        while sent < due {
            let body = format!(
                r#"{{"type":"publish","channel":"{channel}"{kind},"payload":{{"t":{},"p":"{padding}"}}}}"#,
                now_micros()
            );
            let batch = &mut batches[(sent % publishers as u64) as usize];
            batch.extend_from_slice(&client_frame(1, body.as_bytes()));
            sent += 1;
        }
        for (writer, batch) in writers.iter_mut().zip(&mut batches) {
            if !batch.is_empty() && writer.write_all(batch).await.is_err() {
                eprintln!("publisher connection lost");
                return None;
            }
            batch.clear();
        }
    }
    let publish_time = t0.elapsed();
    let expected = sent * subscribers as u64;
    // Let the last deliveries arrive (bounded).
    let drain_deadline = Instant::now() + Duration::from_secs(3);
    while counters.delivered.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let wall = t0.elapsed().as_secs_f64();
    let delivered = counters.delivered.load(Ordering::Relaxed);
    let per_sec = delivered as f64
        / publish_time
            .as_secs_f64()
            .max(wall.min(publish_time.as_secs_f64() + 0.5));
    let q = |x| counters.latency.quantile(x) as f64 / 1000.0;
    Some(Step {
        fraction: delivered as f64 / expected.max(1) as f64,
        per_sec,
        p50: q(0.5),
        p90: q(0.9),
        p99: q(0.99),
        max: q(1.0),
        srv_cpu: srv0
            .zip(cpu_seconds(server_pid))
            .map(|(a, b)| (b - a) / wall * 100.0),
        gen_cpu: gen0
            .zip(cpu_seconds("self"))
            .map(|(a, b)| (b - a) / wall * 100.0),
        rss: rss_bytes(server_pid).unwrap_or(0),
    })
}

// ---------------------------------------------------------------------------------------------
// abuse

/// The kinds of abusive connection, one in five each.
const ABUSES: [&str; 5] = ["flood", "garbage", "oversized", "storm", "slow-reader"];

/// What the abusers did and what the server answered.
#[derive(Default)]
struct AbuseCounters {
    connects: AtomicU64,
    refused: AtomicU64,
    frames: AtomicU64,
}

/// One abusive client: connects, misbehaves in its way until the server drops it, and comes
/// back, until `stop`.
async fn abuser(
    addr: SocketAddr,
    token: Option<String>,
    kind: usize,
    id: usize,
    stop: Arc<AtomicBool>,
    counters: Arc<AbuseCounters>,
) {
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        // Abusers come from ten hosts of their own: 127.0.1.1 to 127.0.1.10.
        let source = std::net::IpAddr::from([127, 0, 1, 1 + (id % 10) as u8]);
        let Ok(mut ws) = RawWs::connect_from(addr, Some(source), token.as_deref()).await else {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        counters.connects.fetch_add(1, Ordering::Relaxed);
        if kind == 4 {
            // Subscribes to the busy channel, then never reads; comes back after a while.
            let _ = subscribe(&mut ws, "bench:abuse").await;
            let deadline = Instant::now() + Duration::from_secs(5);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            continue;
        }
        let (mut reader, mut writer) = ws.stream.into_split();
        let drained = tokio::spawn(async move {
            let mut sink = vec![0u8; 64 * 1024];
            while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
        });
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) && !drained.is_finished() {
            let batch: Vec<u8> = match kind {
                0 => (0..50)
                    .flat_map(|_| {
                        client_frame(
                            1,
                            format!(
                                r#"{{"type":"publish","channel":"spam:{id}","payload":"{round}"}}"#
                            )
                            .as_bytes(),
                        )
                    })
                    .collect(),
                1 => (0..50)
                    .flat_map(|i| match i % 3 {
                        0 => client_frame(1, b"{\"type\":\"publish\",\"chan"),
                        1 => client_frame(1, b"\xff not json at all"),
                        _ => client_frame(2, &[0u8, 1, 2, 3]),
                    })
                    .collect(),
                2 => client_frame(1, &vec![b'x'; 512 * 1024]),
                _ => (0..20)
                    .flat_map(|_| {
                        n += 1;
                        let channel = format!("storm:{id}:{n}");
                        let mut frames = client_frame(
                            1,
                            format!(r#"{{"type":"subscribe","channel":"{channel}","since":0}}"#)
                                .as_bytes(),
                        );
                        frames.extend(client_frame(
                            1,
                            format!(r#"{{"type":"unsubscribe","channel":"{channel}"}}"#).as_bytes(),
                        ));
                        frames
                    })
                    .collect(),
            };
            if writer.write_all(&batch).await.is_err() {
                break;
            }
            counters.frames.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drained.abort();
    }
}

/// `loadgen abuse`: well-behaved subscribers receive a steady fan-out, first alone, then
/// while abusive connections flood publishes, garbage, oversized frames and subscribe storms
/// and read slowly; reports the subscribers' delivery ratio and latency in both phases and
/// the server's peak memory.
async fn abuse(flags: &Flags) {
    let addr: SocketAddr = flags.text("addr").expect("--addr").parse().unwrap();
    let subscribers = flags.get("subscribers", 1000usize);
    let abusers = flags.get("abusers", 200usize);
    let rate = flags.get("rate", 100u64);
    let step = Duration::from_secs(flags.get("step-secs", 10u64));
    let payload_bytes = flags.get("payload", 100usize);
    let server_pid = flags.text("server-pid").unwrap_or("0").to_owned();
    let channel = "bench:abuse";

    let counters = Arc::new(Counters::new());
    connect_subscribers(addr, flags, subscribers, channel, &counters).await;
    let mut writers = connect_publishers(addr, flags, 1).await;
    let padding = padding(payload_bytes);
    println!(
        "{:<14} {:>7} {:>10} {:>8} {:>8} {:>8} {:>9} {:>9} {:>8}",
        "phase",
        "rate/s",
        "delivered",
        "p50 ms",
        "p99 ms",
        "max ms",
        "srv cpu",
        "srv rss",
        "gen cpu"
    );
    let report = |phase: &str, step: &Step| {
        println!(
            "{phase:<14} {rate:>7} {:>9.3}% {:>8.2} {:>8.2} {:>8.2} {:>8.0}% {:>7.1}MB {:>7.0}%",
            step.fraction * 100.0,
            step.p50,
            step.p99,
            step.max,
            step.srv_cpu.unwrap_or(f64::NAN),
            step.rss as f64 / 1e6,
            step.gen_cpu.unwrap_or(f64::NAN),
        );
    };
    let Some(calm) = publish_step(
        &mut writers,
        channel,
        "",
        rate,
        step,
        &padding,
        &counters,
        subscribers,
        &server_pid,
    )
    .await
    else {
        return;
    };
    report("without abuse", &calm);

    let stop = Arc::new(AtomicBool::new(false));
    let abuse_counters = Arc::new(AbuseCounters::default());
    let mut tasks = Vec::new();
    for i in 0..abusers {
        let kind = i % ABUSES.len();
        tasks.push(tokio::spawn(abuser(
            addr,
            token(flags, &format!("abuser{i}")),
            kind,
            i,
            stop.clone(),
            abuse_counters.clone(),
        )));
    }
    // Let the abuse reach its steady state before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let closed_before = counters.closed.load(Ordering::Relaxed);
    let Some(abused) = publish_step(
        &mut writers,
        channel,
        "",
        rate,
        step,
        &padding,
        &counters,
        subscribers,
        &server_pid,
    )
    .await
    else {
        return;
    };
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
    report("under abuse", &abused);
    let peak = peak_rss_bytes(&server_pid).unwrap_or(0);
    println!(
        "abusers: {abusers} ({}), {} connections made, {} refused at connect, {} batches sent",
        ABUSES.join(", "),
        abuse_counters.connects.load(Ordering::Relaxed),
        abuse_counters.refused.load(Ordering::Relaxed),
        abuse_counters.frames.load(Ordering::Relaxed),
    );
    println!(
        "well-behaved subscribers closed during the abuse: {}",
        counters.closed.load(Ordering::Relaxed) - closed_before
    );
    println!(
        "p99 under abuse / without: {:.2}x; server peak RSS {:.1} MB",
        abused.p99 / calm.p99.max(0.001),
        peak as f64 / 1e6
    );
    let pass = abused.fraction >= 1.0 && abused.p99 <= 2.0 * calm.p99.max(1.0);
    println!(
        "target (100% delivered, p99 within 2x): {}",
        if pass { "met" } else { "NOT met" }
    );
}

/// Peak resident memory of a process (VmHWM), in bytes.
fn peak_rss_bytes(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

// ---------------------------------------------------------------------------------------------
// idle

async fn idle(flags: &Flags) {
    let addr: SocketAddr = flags.text("addr").expect("--addr").parse().unwrap();
    let connections = flags.get("connections", 10_000usize);
    let concurrency = flags.get("concurrency", 256usize);
    let server_pid = flags.text("server-pid").unwrap_or("0").to_owned();
    let json = flags.text("json").is_some();
    // Tokens are minted up front so that the measured rate is the server's.
    let tokens: Vec<Option<String>> = (0..connections)
        .map(|i| token(flags, &format!("idle{i}")))
        .collect();

    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = rss_bytes(&server_pid).unwrap_or(0);
    let errors = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let tokens = Arc::new(tokens);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (next, tokens, errors) = (next.clone(), tokens.clone(), errors.clone());
        workers.push(tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= tokens.len() {
                    return held;
                }
                let result = async {
                    let source = std::net::IpAddr::from([127, 0, 0, 2 + (i % 16) as u8]);
                    let mut ws =
                        RawWs::connect_from(addr, Some(source), tokens[i].as_deref()).await?;
                    subscribe(&mut ws, &format!("idle:{i}")).await?;
                    Ok::<_, std::io::Error>(ws)
                }
                .await;
                match result {
                    Ok(ws) => held.push(ws),
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("connection {i}: {e}");
                        }
                    }
                }
            }
        }));
    }
    let mut held = Vec::new();
    for w in workers {
        held.extend(w.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Let the server settle, then check every connection is still there.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss_bytes(&server_pid).unwrap_or(0);
    let open = held.len();
    let per_conn = rss_after.saturating_sub(rss_before) as f64 / open.max(1) as f64;
    let rate = open as f64 / elapsed;
    let errors = errors.load(Ordering::Relaxed);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "scenario": "idle", "connections": connections, "open": open, "errors": errors,
                "handshakes_per_sec": rate.round(), "server_rss_before": rss_before,
                "server_rss_after": rss_after, "rss_bytes_per_connection": per_conn.round(),
            })
        );
    } else {
        println!(
            "idle {connections:>6} connections: {open} open, {errors} errors, {rate:.0} handshakes/s \
             (connect + JWT + subscribe), server RSS {:.1} MB -> {:.1} MB = {per_conn:.0} bytes/connection",
            rss_before as f64 / 1e6,
            rss_after as f64 / 1e6
        );
    }
    drop(held);
}

// ---------------------------------------------------------------------------------------------
// The reference relay: tokio and pre-encoded frames written straight to sockets. No auth, no
// store, no JSON parsing beyond finding the payload; it answers `welcome` and `subscribed`
// so that the same generator drives it. Every connection but a publisher is a subscriber
// of the one channel.

type Outbound = tokio::sync::mpsc::UnboundedSender<Bytes>;

fn server_text(json: &str) -> Bytes {
    let mut out = Vec::with_capacity(json.len() + 10);
    frame::text(&mut out, json.as_bytes());
    Bytes::from(out)
}

struct Baseline {
    subscribers: std::sync::Mutex<Vec<Outbound>>,
    seq: AtomicU64,
}

async fn baseline_server(flags: &Flags) {
    let listen = flags.text("listen").unwrap_or("127.0.0.1:0");
    let listener = TcpListener::bind(listen).await.unwrap();
    println!("listening {}", listener.local_addr().unwrap());
    let shared = Arc::new(Baseline {
        subscribers: std::sync::Mutex::new(Vec::new()),
        seq: AtomicU64::new(0),
    });
    let stop = Arc::new(AtomicBool::new(false));
    while !stop.load(Ordering::Relaxed) {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(baseline_connection(stream, shared.clone()));
    }
}

async fn baseline_connection(mut stream: TcpStream, shared: Arc<Baseline>) {
    // Handshake.
    let mut buf = BytesMut::with_capacity(4096);
    let head_end = loop {
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let _ = buf.split_to(head_end);
    let Some(key) = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("sec-websocket-key")
            .then(|| value.trim().to_owned())
    }) else {
        return;
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    if stream.write_all(response.as_bytes()).await.is_err() {
        return;
    }
    let (mut reader, writer) = stream.into_split();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    // Writer: take everything queued, write it in one go.
    tokio::spawn(async move {
        let mut writer = writer;
        let mut batch = Vec::new();
        let mut out = Vec::with_capacity(64 * 1024);
        while rx.recv_many(&mut batch, 1024).await > 0 {
            out.clear();
            for frame in batch.drain(..) {
                out.extend_from_slice(&frame);
            }
            if writer.write_all(&out).await.is_err() {
                return;
            }
        }
    });
    let _ = tx.send(server_text(
        r#"{"type":"welcome","connection_id":"0","user":"u","heartbeat_ms":25000}"#,
    ));
    // Reader: unmask client frames; `subscribe` registers, `publish` fans out.
    loop {
        while let Some(head) = FrameHead::parse(&buf) {
            let total = head.frame_len();
            if buf.len() < total {
                break;
            }
            let opcode = head.opcode;
            let mut payload = buf[head.header_len..total].to_vec();
            frame::unmask(&mut payload, head.mask.unwrap_or_default());
            let _ = buf.split_to(total);
            match opcode {
                1 if find(&payload, b"\"subscribe\"").is_some() => {
                    let _ = tx.send(server_text(
                        r#"{"type":"subscribed","channel":"bench:fanout","seq":0}"#,
                    ));
                    shared.subscribers.lock().unwrap().push(tx.clone());
                }
                1 if find(&payload, b"\"publish\"").is_some() => {
                    let Some(at) = find(&payload, b"\"payload\":") else {
                        continue;
                    };
                    let body = &payload[at + 10..payload.len() - 1];
                    let seq = shared.seq.fetch_add(1, Ordering::Relaxed) + 1;
                    let json = format!(
                        r#"{{"type":"message","channel":"bench:fanout","seq":{seq},"payload":{}}}"#,
                        String::from_utf8_lossy(body)
                    );
                    // Encoded once; every subscriber gets the same bytes.
                    let frame = server_text(&json);
                    for sub in shared.subscribers.lock().unwrap().iter() {
                        let _ = sub.send(frame.clone());
                    }
                }
                8 => return,
                _ => {}
            }
        }
        match reader.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// latest: a reader ten times slower than the publisher, `latest` against `reliable`

/// The publisher's `"n":<digits>` of a message frame (its count, as ephemeral messages
/// carry no seq).
fn seq_of(payload: &[u8]) -> Option<u64> {
    let at = find(payload, b"\"n\":")? + 4;
    let digits: Vec<u8> = payload[at..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// One reader on `channel` in `mode`, reading one frame per `pause`, while a publisher sends
/// `rate` ephemeral messages a second for `secs` (ephemeral, so that the server's memory is
/// the outbox's, not the store's); then the reader goes on (bounded) until it has the
/// newest. Prints one row.
async fn latest_run(flags: &Flags, mode: &str, rate: u64, secs: u64, payload: &str) {
    let addr: SocketAddr = flags.text("addr").expect("--addr").parse().unwrap();
    let server_pid = flags.text("server-pid").unwrap_or("0").to_owned();
    let channel = format!("bench:{mode}");
    let pause = Duration::from_secs_f64(10.0 / rate as f64);

    let mut reader = RawWs::connect(addr, token(flags, &format!("reader-{mode}")).as_deref())
        .await
        .unwrap();
    let welcome = reader.next_text().await.unwrap();
    assert!(find(&welcome, b"\"welcome\"").is_some());
    let frame = format!(r#"{{"type":"subscribe","id":1,"channel":"{channel}","mode":"{mode}"}}"#);
    reader
        .stream
        .write_all(&client_frame(1, frame.as_bytes()))
        .await
        .unwrap();
    let last = Arc::new(AtomicU64::new(0));
    let read = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(AtomicBool::new(false));
    let reading = tokio::spawn({
        let (last, read, closed) = (last.clone(), read.clone(), closed.clone());
        async move {
            loop {
                match reader.next_text().await {
                    Ok(text) => {
                        if let Some(seq) = seq_of(&text) {
                            last.store(seq, Ordering::Relaxed);
                            read.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        closed.store(true, Ordering::Relaxed);
                        return;
                    }
                }
                tokio::time::sleep(pause).await;
            }
        }
    });

    let mut publisher = connect_publishers(addr, flags, 1).await;
    let mut rss = Vec::new();
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (mut sent, mut next_sample) = (0u64, Duration::ZERO);
    let total = rate * secs;
    let mut batch = Vec::new();
    while sent < total {
        ticker.tick().await;
        let due = ((started.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        while sent < due {
            sent += 1;
            let body = format!(
                r#"{{"type":"publish","channel":"{channel}","ephemeral":true,"payload":{{"n":{sent},"p":"{payload}"}}}}"#
            );
            batch.extend_from_slice(&client_frame(1, body.as_bytes()));
        }
        if !batch.is_empty() {
            publisher[0].write_all(&batch).await.unwrap();
            batch.clear();
        }
        if started.elapsed() >= next_sample {
            rss.extend(rss_bytes(&server_pid));
            next_sample += Duration::from_secs(1);
        }
    }
    let behind_at_end = sent.saturating_sub(last.load(Ordering::Relaxed));
    // The reader goes on at its pace: how long until it has the newest?
    let drain = Instant::now();
    let deadline = drain + Duration::from_secs(60);
    while last.load(Ordering::Relaxed) < sent
        && !closed.load(Ordering::Relaxed)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let caught_up = (last.load(Ordering::Relaxed) >= sent).then(|| drain.elapsed());
    reading.abort();
    let mb = |b: &u64| *b as f64 / 1e6;
    let (low, high) = (
        rss.iter().map(mb).fold(f64::INFINITY, f64::min),
        rss.iter().map(mb).fold(0.0, f64::max),
    );
    if flags.text("json").is_some() {
        println!(
            "{}",
            serde_json::json!({
                "scenario": "latest", "mode": mode, "rate": rate, "seconds": secs,
                "published": sent, "frames_read": read.load(Ordering::Relaxed),
                "behind_at_end": behind_at_end, "closed": closed.load(Ordering::Relaxed),
                "newest_after_s": caught_up.map(|d| d.as_secs_f64()),
                "server_rss_min_mb": low, "server_rss_max_mb": high,
            })
        );
    } else {
        println!(
            "{mode:<9} {rate:>7} {sent:>10} {:>11} {behind_at_end:>13} {:>8} {:>15} {low:>10.1} {high:>10.1}",
            read.load(Ordering::Relaxed),
            closed.load(Ordering::Relaxed),
            caught_up.map_or_else(
                || "never".to_owned(),
                |d| format!("{:.2} s", d.as_secs_f64())
            ),
        );
    }
}

async fn latest(flags: &Flags) {
    let rate = flags.get("rate", 500u64);
    let secs = flags.get("step-secs", 10u64);
    let payload = padding(flags.get("payload", 10_000usize));
    if flags.text("json").is_none() {
        println!(
            "{:<9} {:>7} {:>10} {:>11} {:>13} {:>8} {:>15} {:>10} {:>10}",
            "mode",
            "rate/s",
            "published",
            "frames read",
            "behind at end",
            "closed",
            "newest after",
            "rss min MB",
            "rss max MB"
        );
    }
    for mode in ["latest", "reliable"] {
        latest_run(flags, mode, rate, secs, &payload).await;
    }
}
