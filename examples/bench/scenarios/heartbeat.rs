//! Heartbeats (issue 30): what pinging every socket costs an idle hub, in CPU and memory,
//! against the same hub with heartbeats off in the same run, at several socket counts; how
//! the pings spread over the interval; and how long a hub takes to close sockets whose
//! network stalled without closing, against the bound of interval + timeout.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{StreamExt, stream};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::clients::Position;
use crate::kafka::Broker;
use crate::report::{Usage, histogram, print_latency, report_client, wait_quiet};
use crate::servers::Server;
use crate::{Args, Socket, now_us};

/// The window in which the busiest moment of the pings is counted, as issue 30 asks.
const BUSIEST_WINDOW_US: u64 = 10_000;

pub async fn heartbeat(binary: &Path, kafka: &Broker, work: &Path, args: &Args) {
    let interval = args.ping_interval;
    let timeout = args.pong_timeout;
    let window = Duration::from_secs(args.heartbeat_window);
    println!(
        "idle sockets (authenticated, subscribed, reading as a browser does), heartbeats on (--ping-interval {interval}s --pong-timeout {timeout}s) and off (--ping-interval 0s), a fresh hub each, hub CPU over {} s ({:.1} intervals)",
        window.as_secs(),
        window.as_secs_f64() / interval as f64
    );
    println!("load generator: {}", descriptor_limit());
    let on = [
        "--ping-interval".to_string(),
        format!("{interval}s"),
        "--pong-timeout".to_string(),
        format!("{timeout}s"),
    ];
    let off = ["--ping-interval".to_string(), "0s".to_string()];
    // Per socket count, heartbeats on and off.
    let mut rows: Vec<(f64, Idle, Idle)> = Vec::new();
    for &count in &args.heartbeat_sockets {
        let mut measured = Vec::new();
        for (label, settings) in [("on", &on[..]), ("off", &off[..])] {
            let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
            let name = format!("heartbeat-{count}-{label}");
            let hub = Server::hub(binary, &kafka.addr, work, count, &name, &settings).await;
            let pinging = (label == "on").then_some(interval);
            let idle = idle_cost(&hub, count, window, pinging, work).await;
            measured.push(idle);
        }
        let (on, off) = (&measured[0], &measured[1]);
        let pings = on.pings as f64;
        println!(
            "{count} sockets: heartbeats cost {:+.2}% of a core ({:.1} us of CPU per ping answered) and {:+.2} KiB per socket",
            (on.cpu - off.cpu) * 100.0,
            (on.cpu - off.cpu) * window.as_secs_f64() / pings * 1e6,
            on.kib_per_socket - off.kib_per_socket
        );
        let (on, off) = (measured.remove(0), measured.remove(0));
        rows.push((count as f64, on, off));
    }
    if rows.len() >= 2 {
        // Least-squares lines over the counts, each measure against the sockets.
        let n: Vec<f64> = rows.iter().map(|r| r.0).collect();
        let fit = |of: &dyn Fn(&(f64, Idle, Idle)) -> f64| {
            line(&n, &rows.iter().map(of).collect::<Vec<_>>())
        };
        let (cpu_on, cpu_off) = (fit(&|r| r.1.cpu), fit(&|r| r.2.cpu));
        let (rss_on, rss_off) = (fit(&|r| r.1.rss_kib), fit(&|r| r.2.rss_kib));
        println!(
            "fitted over {} counts, per 1,000 sockets: CPU {:.3}% of a core with heartbeats, {:.3}% without; memory {:.2} MiB with, {:.2} MiB without ({:.2} and {:.2} KiB per socket)",
            rows.len(),
            cpu_on.1 * 1000.0 * 100.0,
            cpu_off.1 * 1000.0 * 100.0,
            rss_on.1 * 1000.0 / 1024.0,
            rss_off.1 * 1000.0 / 1024.0,
            rss_on.1,
            rss_off.1
        );
        let at = |(base, per): (f64, f64)| base + per * 100_000.0;
        println!(
            "at 100000 sockets, extrapolated along those lines (not measured: the descriptor limit): with heartbeats {:.1}% of a core and {:.0} MiB, without {:.1}% and {:.0} MiB",
            at(cpu_on) * 100.0,
            at(rss_on) / 1024.0,
            at(cpu_off) * 100.0,
            at(rss_off) / 1024.0
        );
    }
    dead_network(binary, kafka, work, args).await;
}

/// What one idle hub cost over the window.
struct Idle {
    /// Share of a core.
    cpu: f64,
    /// Resident memory at the end, and its growth per socket since the hub started.
    rss_kib: f64,
    kib_per_socket: f64,
    /// Pings the sockets answered in the window.
    pings: usize,
}

/// `count` reading sockets on `hub`, then its CPU over `window` and its memory; with
/// heartbeats (every `pinging` seconds), how the pings spread over the window.
async fn idle_cost(
    hub: &Server,
    count: usize,
    window: Duration,
    pinging: Option<u64>,
    work: &Path,
) -> Idle {
    wait_quiet(&hub.pid, 0.02).await;
    let before = hub.usage();
    let opening = Instant::now();
    let listeners = Listeners::open(hub, count).await;
    let opened_in = opening.elapsed();
    // Until the subscribes are behind it.
    wait_quiet(&hub.pid, 0.05).await;
    let closed = hub.metric("wskafka_unresponsive_closes_total").await;
    let capture = match pinging {
        Some(_) => Capture::start(hub, 0x89, work).await,
        None => None,
    };
    let (client, start) = (Usage::of_self(), hub.usage());
    let from = now_us();
    tokio::time::sleep(window).await;
    let to = now_us();
    let after = hub.usage();
    let sent = match capture {
        Some(capture) => Some(capture.stop().await),
        None => None,
    };
    let cpu = after.cpu_since(&start);
    let kib_per_socket = (after.rss_kib as f64 - before.rss_kib as f64) / count as f64;
    let mut pings: Vec<u64> = listeners
        .pings
        .lock()
        .unwrap()
        .iter()
        .copied()
        .filter(|at| (from..to).contains(at))
        .collect();
    println!(
        "heartbeats {}: {count} sockets (opened in {:.1} s), RSS {} -> {} KiB ({kib_per_socket:.2} KiB per socket); over {:.0} s hub CPU {:.3} s ({:.2}% of a core), {} pings answered ({:.0}/s), {} sockets closed unresponsive",
        if pinging.is_some() { "on" } else { "off" },
        opened_in.as_secs_f64(),
        before.rss_kib,
        after.rss_kib,
        window.as_secs_f64(),
        (after.cpu - start.cpu).as_secs_f64(),
        cpu * 100.0,
        pings.len(),
        pings.len() as f64 / window.as_secs_f64(),
        hub.metric("wskafka_unresponsive_closes_total").await - closed
    );
    report_client(&client);
    if let Some(interval) = pinging
        && !pings.is_empty()
    {
        let evenly = pings.len() as f64 * BUSIEST_WINDOW_US as f64 / (to - from) as f64;
        let mut random = uniform_times(pings.len(), from, to);
        let random = busiest(&mut random, BUSIEST_WINDOW_US);
        if let Some(sent) = sent {
            let mut sent: Vec<u64> = sent
                .into_iter()
                .filter(|at| (from..to).contains(at))
                .collect();
            let most = busiest(&mut sent, BUSIEST_WINDOW_US);
            println!(
                "  pings the hub sent (tcpdump, the kernel's time): {}; the busiest 10 ms held {most} (spread evenly: {evenly:.1}; at random times, the same number: {random})",
                sent.len(),
            );
            // A hub held off the CPU sends nothing, then every ping that fell due meanwhile;
            // each socket's next ping is due an interval after its last one was sent, so
            // whether such a clump comes back an interval later tells a passing stall from
            // a lasting one.
            let within = |from: u64| {
                sent.partition_point(|&t| t < from + BUSIEST_WINDOW_US)
                    - sent.partition_point(|&t| t < from)
            };
            let start = sent
                .iter()
                .copied()
                .find(|&at| within(at) == most)
                .unwrap_or(0);
            let longest = sent.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
            let interval_us = interval * 1_000_000;
            let later = match start + interval_us + BUSIEST_WINDOW_US < to {
                // From 2 ms earlier: a clump drifts by the time each ping takes to send.
                true => within(start + interval_us - 2_000).to_string(),
                false => "past the window".to_string(),
            };
            let bins = (to - from).div_ceil(BUSIEST_WINDOW_US);
            let crowded = (0..bins)
                .filter(|bin| within(from + bin * BUSIEST_WINDOW_US) as f64 > 2.0 * evenly)
                .count();
            println!(
                "  the same 10 ms an interval later (from 2 ms before): {later}; the longest silence between two pings: {:.1} ms; 10 ms windows holding more than twice the even number: {crowded} of {bins}",
                longest as f64 / 1e3
            );
        }
        println!(
            "  pings as the load generator read them: the busiest 10 ms held {} (its own scheduling adds to this)",
            busiest(&mut pings, BUSIEST_WINDOW_US)
        );
    }
    drop(listeners);
    Idle {
        cpu,
        rss_kib: after.rss_kib as f64,
        kib_per_socket,
        pings: pings.len(),
    }
}

/// `--stalled` sockets read (and so answer pings) until their network stalls at once
/// without closing: they stop reading, as a socket behind a proxy that stopped forwarding
/// does (the kernel still takes the hub's bytes, so the hub sees no error). Measured: from
/// the stall until the hub closed each socket for not answering, as the hub counts it
/// (`wskafka_unresponsive_closes_total`, read every 20 ms), against interval + timeout.
async fn dead_network(binary: &Path, kafka: &Broker, work: &Path, args: &Args) {
    let (interval, timeout, count) = (args.ping_interval, args.pong_timeout, args.stalled);
    let settings = [
        "--ping-interval".to_string(),
        format!("{interval}s"),
        "--pong-timeout".to_string(),
        format!("{timeout}s"),
    ];
    let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
    let hub = Server::hub(binary, &kafka.addr, work, count, "dead-network", &settings).await;
    let listeners = Listeners::open(&hub, count).await;
    wait_quiet(&hub.pid, 0.05).await;
    let closed_before = hub.metric("wskafka_unresponsive_closes_total").await as usize;
    let capture = Capture::start(&hub, 0x88, work).await;
    let stalled_at = Instant::now();
    let stalled_us = now_us();
    let held = listeners.stall().await;
    let bound = Duration::from_secs(interval + timeout);
    let mut detected = histogram();
    let mut all_gone = None;
    let (mut polls, mut last_poll) = (0, stalled_at);
    let deadline = stalled_at + bound + Duration::from_secs(15);
    while Instant::now() < deadline {
        polls += 1;
        last_poll = Instant::now();
        let closed = hub.metric("wskafka_unresponsive_closes_total").await as usize - closed_before;
        let since = stalled_at.elapsed().as_micros() as u64;
        while (detected.len() as usize) < closed.min(count) {
            detected.record(since).unwrap();
        }
        if all_gone.is_none() && hub.metric("wskafka_connections").await == 0.0 {
            all_gone = Some(stalled_at.elapsed());
        }
        if detected.len() as usize >= count && all_gone.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "{count} sockets whose network stalled at once, heartbeats {interval} s + {timeout} s: bound {} s; a stall at a random point of the interval is closed between {timeout} and {} s after it (p50 {:.1} s, p99 {:.2} s)",
        bound.as_secs(),
        bound.as_secs(),
        timeout as f64 + interval as f64 * 0.5,
        timeout as f64 + interval as f64 * 0.99
    );
    print_latency(
        &format!(
            "from the stall to the hub's count of its close (/metrics read every {:.0} ms on average)",
            (last_poll - stalled_at).as_secs_f64() * 1e3 / polls as f64
        ),
        &detected,
    );
    if let Some(capture) = capture {
        let mut sent = histogram();
        for at in capture.stop().await {
            if at >= stalled_us {
                sent.record((at - stalled_us).max(1)).unwrap();
            }
        }
        print_latency(
            "from the stall to the hub's close frame (tcpdump, the kernel's time)",
            &sent,
        );
        println!(
            "  close frames within the bound: {} of {}",
            count_within(&sent, bound),
            sent.len()
        );
    }
    println!(
        "counted closed by the bound: {} of {}; min {:.2} s; every socket's seat released (wskafka_connections 0) {}",
        count_within(&detected, bound),
        detected.len(),
        detected.min() as f64 / 1e6,
        match all_gone {
            Some(at) => format!("{:.2} s after the stall", at.as_secs_f64()),
            None => "not within the bound + 15 s".to_string(),
        }
    );
    drop(held);
}

/// Samples of `h` at or under `bound`.
fn count_within(h: &hdrhistogram::Histogram<u64>, bound: Duration) -> usize {
    h.count_between(0, bound.as_micros() as u64) as usize
}

/// Sockets read all along, as a browser's are: the WebSocket library answers each ping of
/// the hub's; each ping's arrival is noted.
struct Listeners {
    pings: Arc<Mutex<Vec<u64>>>,
    stall: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Socket>>,
}

impl Listeners {
    /// `count` sockets of `hub`, authenticated and subscribed, each read from the moment it
    /// is open (one held unread while thousands of others open would miss its pings).
    async fn open(hub: &Server, count: usize) -> Listeners {
        let (stall, _) = watch::channel(false);
        let mut listeners = Listeners {
            pings: Arc::new(Mutex::new(Vec::new())),
            stall,
            tasks: Vec::with_capacity(count),
        };
        let mut opening = stream::iter(0..count)
            .map(|n| async move {
                let user = format!("load-{n}");
                let (socket, _) = hub
                    .subscribe("bench.idle", &user, &Position::default())
                    .await;
                socket
            })
            .buffer_unordered(64);
        while let Some(socket) = opening.next().await {
            listeners.read(socket);
        }
        listeners
    }

    fn read(&mut self, mut socket: Socket) {
        let (pings, mut stalled) = (self.pings.clone(), self.stall.subscribe());
        self.tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stalled.wait_for(|stalled| *stalled) => break,
                    frame = socket.next() => match frame {
                        // Its pong goes out on the next read.
                        Some(Ok(Message::Ping(_))) => pings.lock().unwrap().push(now_us()),
                        Some(Ok(_)) => {}
                        _ => break,
                    },
                }
            }
            socket
        }));
    }

    /// Every socket stops reading, and is held open unread.
    async fn stall(mut self) -> Vec<Socket> {
        self.stall.send_replace(true);
        let mut held = Vec::with_capacity(self.tasks.len());
        for task in std::mem::take(&mut self.tasks) {
            held.push(task.await.unwrap());
        }
        held
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The most of `times` (µs, sorted here) within any `window`.
fn busiest(times: &mut [u64], window: u64) -> usize {
    times.sort_unstable();
    let (mut first, mut most) = (0, 0);
    for last in 0..times.len() {
        while times[last] - times[first] >= window {
            first += 1;
        }
        most = most.max(last - first + 1);
    }
    most
}

/// `count` times drawn uniformly from `from..to` (splitmix64, a fixed seed): what pings
/// falling at random would look like.
fn uniform_times(count: usize, from: u64, to: u64) -> Vec<u64> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..count)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            from + z % (to - from)
        })
        .collect()
}

/// The least-squares line of `y` over `x`: (intercept, slope).
fn line(x: &[f64], y: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let cov: f64 = x.iter().zip(y).map(|(x, y)| (x - mx) * (y - my)).sum();
    let var: f64 = x.iter().map(|x| (x - mx) * (x - mx)).sum();
    (my - cov / var * mx, cov / var)
}

/// This process's limit on open descriptors, which bounds the sockets a run can hold (the
/// hub raises its own soft limit to the same hard limit).
fn descriptor_limit() -> String {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            format!(
                "open files soft {} / hard {} (a socket each, at each end)",
                fields[3], fields[4]
            )
        })
        .unwrap_or_else(|| "open files limit unknown".into())
}

/// WebSocket frames the hub sends on loopback that start with `first_byte` (0x89 a ping,
/// 0x88 a close, both unmasked from a server), as tcpdump sees them leave: the kernel's
/// time of each, unaffected by when the load generator got to read them. None when tcpdump
/// is not installed or may not capture here.
struct Capture {
    child: tokio::process::Child,
    file: PathBuf,
}

impl Capture {
    async fn start(hub: &Server, first_byte: u8, work: &Path) -> Option<Capture> {
        let port = hub.addr.rsplit(':').next()?;
        let file = work.join(format!("capture-{port}-{first_byte:x}.pcap"));
        let filter =
            format!("tcp src port {port} and tcp[((tcp[12] & 0xf0) >> 2)] = {first_byte:#x}");
        let mut child = tokio::process::Command::new("tcpdump")
            .args(["-i", "lo", "-n", "-U", "-s", "96", "-w"])
            .arg(&file)
            .arg(&filter)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .ok()?;
        // It says so on stderr once it listens.
        let mut lines = BufReader::new(child.stderr.take()?).lines();
        let listening = tokio::time::timeout(Duration::from_secs(10), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("listening on") {
                    return true;
                }
            }
            false
        });
        if !matches!(listening.await, Ok(true)) {
            println!("  (tcpdump did not start: no capture of the hub's frames)");
            return None;
        }
        Some(Capture { child, file })
    }

    /// Stops capturing; the frames' times, on the bench's clock (µs since its start).
    async fn stop(mut self) -> Vec<u64> {
        // Each packet was written as it came (-U).
        let _ = self.child.kill().await;
        let out = tokio::process::Command::new("tcpdump")
            .args(["-r"])
            .arg(&self.file)
            .args(["-n", "-tt"])
            .stderr(Stdio::null())
            .output()
            .await
            .expect("tcpdump reads its capture");
        let (epoch, bench) = (
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_micros() as i64,
            now_us() as i64,
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| {
                let seconds: f64 = line.split(' ').next()?.parse().ok()?;
                let at = (seconds * 1e6) as i64 - epoch + bench;
                u64::try_from(at).ok()
            })
            .collect()
    }
}
