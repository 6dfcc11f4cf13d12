//! The Markdown report: one table, the targets, and how it was measured.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use spa_bench::stats::{Summary, ms};

use crate::daemon::{Kind, Programs};
use crate::phases::Flood;
use crate::{FloodRate, Opts, Results};

fn us(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_owned(), |d| format!("{:.1} µs", d.as_secs_f64() * 1e6))
}

fn pct(f: Option<f64>) -> String {
    f.map_or_else(|| "-".to_owned(), |f| format!("{:.2} %", f * 100.0))
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn med_p99(s: &Summary, sent: usize) -> String {
    if s.n == 0 {
        return format!("none of {sent} opened");
    }
    let mut t = format!("{} / {} ms", ms(s.median), ms(s.p99));
    if s.n < sent {
        let _ = write!(t, " ({} of {sent} opened)", s.n);
    }
    t
}

/// `100 pkt/s`, `full speed`.
pub(crate) fn rate_label(rate: FloodRate) -> String {
    rate.0.map_or_else(|| "full speed".to_owned(), |n| format!("{} pkt/s", thousands(n)))
}

/// Knocks that opened in time, of those sent, and grants made too late to count.
fn granted_cell(f: &Flood) -> String {
    let late = f.daemon_grants.saturating_sub(f.summary.n as u64);
    if late > 0 {
        format!("{} of {} (+{late} granted too late)", f.summary.n, f.knocks)
    } else {
        format!("{} of {}", f.summary.n, f.knocks)
    }
}

/// The self-flood round at `rate`.
fn at(r: &Results, rate: FloodRate) -> Option<&Flood> {
    r.selfflood.iter().find(|(x, _)| *x == rate).map(|(_, f)| f)
}

/// Junk the daemon handled: its rate over the flood and its share of what was sent.
fn handled_cell(f: &Flood) -> String {
    let rate = if f.report.secs > 0.0 { f.handled as f64 / f.report.secs } else { 0.0 };
    let share = if f.report.sent > 0 { 100.0 * f.handled as f64 / f.report.sent as f64 } else { 0.0 };
    format!("{} pkt/s ({share:.0} %)", thousands(rate as u64))
}

fn version(cmd: &str, arg: &str) -> String {
    std::process::Command::new(cmd)
        .arg(arg)
        .output()
        .ok()
        .map(|o| {
            let t = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
            t.lines().next().unwrap_or("").trim().to_owned()
        })
        .unwrap_or_default()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores ({cpu}), Linux {}", kernel.trim())
}

fn now_utc() -> String {
    let s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{s}"), "+%Y-%m-%d %H:%M UTC"])
        .output();
    out.ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_else(|| s.to_string())
}

/// One table row: a label and a cell per daemon.
struct Row {
    label: String,
    cells: Vec<String>,
    target: String,
}

/// Renders everything measured.
pub(crate) fn render(
    opts: &Opts,
    progs: &Programs,
    kinds: &[Kind],
    results: &BTreeMap<Kind, Results>,
) -> String {
    let empty = Results::default();
    let get = |k: Kind| results.get(&k).unwrap_or(&empty);
    let mut rows: Vec<Row> = Vec::new();
    let mut row = |label: String, target: &str, f: &dyn Fn(Kind, &Results) -> String| {
        let cells: Vec<String> = kinds.iter().map(|&k| f(k, get(k))).collect();
        if cells.iter().any(|c| c != "-") {
            rows.push(Row { label, cells, target: target.to_owned() });
        }
    };

    row(format!("Open latency, median / p99 ({} knocks)", opts.knocks), "≤ 1 / ≤ 5 ms", &|_, r| {
        r.latency.as_ref().map_or("-".into(), |l| med_p99(&l.summary, l.knocks))
    });
    row(
        format!("… without the first knock after start ({} knocks)", opts.knocks.saturating_sub(1)),
        "",
        &|_, r| {
            r.latency.as_ref().map_or("-".into(), |l| med_p99(&l.after_first, l.knocks.saturating_sub(1)))
        },
    );
    let n = opts.flood_knocks;
    row(format!("Under flood: knocks granted (of {n})"), &format!("{n} of {n}"), &|_, r| {
        r.flood.as_ref().map_or("-".into(), granted_cell)
    });
    row("Under flood: open latency, median / p99".into(), "p99 ≤ 20 ms", &|_, r| {
        r.flood.as_ref().map_or("-".into(), |f| med_p99(&f.summary, f.knocks))
    });
    row("… without the first knock after start".into(), "", &|_, r| {
        r.flood.as_ref().map_or("-".into(), |f| med_p99(&f.after_first, f.knocks.saturating_sub(1)))
    });
    row("Under flood: junk sent by spa-flood".into(), "", &|_, r| {
        r.flood.as_ref().map_or("-".into(), |f| format!("{} pkt/s", thousands(f.report.rate as u64)))
    });
    row("Under flood: junk handled by the daemon".into(), "", &|_, r| {
        r.flood.as_ref().map_or("-".into(), handled_cell)
    });
    row("Under flood: daemon CPU".into(), "", &|_, r| {
        r.flood.as_ref().map_or("-".into(), |f| format!("{:.0} % of a core", f.cpu_fraction * 100.0))
    });
    let mut rates: Vec<FloodRate> =
        kinds.iter().flat_map(|&k| get(k).selfflood.iter().map(|(rate, _)| *rate)).collect();
    rates.sort_unstable_by_key(|r| r.order());
    rates.dedup();
    for rate in rates {
        let n = opts.selfflood_knocks;
        row(
            format!("Junk from the client's own address at {}: knocks granted (of {n})", rate_label(rate)),
            &format!("{n} of {n}"),
            &|_, r| at(r, rate).map_or("-".into(), granted_cell),
        );
        row("… open latency of the granted knocks, median / p99".into(), "", &|_, r| {
            at(r, rate).map_or("-".into(), |f| med_p99(&f.summary, f.knocks))
        });
        row("… junk sent by spa-flood / handled by the daemon".into(), "", &|_, r| {
            at(r, rate).map_or("-".into(), |f| {
                let limited = if f.limited > 0 {
                    format!("; {} refused as rate_limited", thousands(f.limited))
                } else {
                    String::new()
                };
                format!("{} pkt/s / {}{limited}", thousands(f.report.rate as u64), handled_cell(f))
            })
        });
    }
    row(format!("CPU per junk packet ({} s flood)", opts.junk_secs), "", &|_, r| {
        r.cpu
            .as_ref()
            .map_or("-".into(), |c| format!("{} ({} handled)", us(c.cpu_per_junk), thousands(c.junk_handled)))
    });
    row("CPU per valid knock, firewall change included".into(), "", &|_, r| {
        r.cpu.as_ref().map_or("-".into(), |c| {
            let helpers = match (c.cpu_per_valid, c.own_per_valid) {
                (Some(t), Some(o)) => {
                    format!("; daemon {}, helpers {}", us(Some(o)), us(Some(t.saturating_sub(o))))
                }
                _ => String::new(),
            };
            format!("{} ({} knocks{helpers})", us(c.cpu_per_valid), thousands(c.valid as u64))
        })
    });
    row("Grants per second (new addresses)".into(), "", &|_, r| {
        r.cpu.as_ref().map_or("-".into(), |c| {
            if c.lost > 0 {
                format!("{:.0} ({} knocks lost)", c.rate, c.lost)
            } else {
                format!("{:.0}", c.rate)
            }
        })
    });
    row("Idle CPU, no grants".into(), "≈ 0", &|_, r| {
        r.cpu.as_ref().map_or("-".into(), |c| pct(Some(c.idle_fraction)))
    });
    let mut levels: Vec<usize> = kinds
        .iter()
        .filter_map(|&k| get(k).scale.as_ref())
        .flat_map(|s| s.levels.iter().map(|l| l.target))
        .collect();
    levels.sort_unstable();
    levels.dedup();
    for n in levels {
        let target = if n == 100_000 { "median ≤ 0.5 ms" } else { "" };
        row(
            format!("Grant apply (open latency) at {} active grants, median / p99", thousands(n as u64)),
            target,
            &|_, r| {
                let Some(s) = &r.scale else { return "-".into() };
                match s.levels.iter().find(|l| l.target == n) {
                    Some(l) if l.active + 1 < n => {
                        format!(
                            "{} (only {} reached)",
                            med_p99(&l.probe, l.probes),
                            thousands(l.active as u64)
                        )
                    }
                    Some(l) => med_p99(&l.probe, l.probes),
                    None => "-".into(),
                }
            },
        );
    }
    row("Fill rate to the top level".into(), "", &|_, r| {
        r.scale.as_ref().and_then(|s| s.levels.last()).map_or("-".into(), |l| {
            let lost: usize = r.scale.as_ref().map_or(0, |s| s.levels.iter().map(|l| l.lost).sum());
            let lost = if lost > 0 { format!("; {lost} knocks lost") } else { String::new() };
            format!("{:.0} grants/s ({:.0} s{lost})", l.fill_rate, l.fill_secs)
        })
    });
    row(format!("Idle CPU over {} s at the top level", opts.idle_secs), "≈ 0", &|_, r| {
        r.scale.as_ref().map_or("-".into(), |s| {
            let at = s.levels.last().map_or(0, |l| l.active);
            format!("{} ({} grants)", pct(s.idle_fraction), thousands(at as u64))
        })
    });
    row("VmRSS at the top level: daemon / with helpers".into(), "", &|_, r| {
        r.scale.as_ref().map_or("-".into(), |s| {
            let mib = |k: Option<u64>| k.map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0));
            format!("{} / {} MiB", mib(s.rss_kib), mib(s.tree_rss_kib))
        })
    });
    row(format!("Replay: CPU per replayed packet ({} copies)", thousands(opts.replays)), "", &|_, r| {
        r.replay.as_ref().map_or("-".into(), |p| {
            format!(
                "{} ({} of {} refused as replay)",
                us(p.cpu_per_replay),
                thousands(p.handled),
                thousands(p.sent)
            )
        })
    });
    row("Replay: grants from the packet and all copies".into(), "1", &|_, r| {
        r.replay.as_ref().map_or("-".into(), |p| {
            if p.extends > 0 {
                format!("{} (+{} extends)", p.grants, p.extends)
            } else {
                p.grants.to_string()
            }
        })
    });

    let mut md = String::new();
    let _ = writeln!(md, "# spad vs fwknopd, {}\n", now_utc());
    let _ = writeln!(md, "- Machine: {}", machine());
    let _ = writeln!(
        md,
        "- spad: `{}` ({} backend); fwknopd: `{}`",
        version(&progs.spad.display().to_string(), "--version"),
        progs.spad_backend,
        version(&progs.fwknopd, "--version")
    );
    let _ = writeln!(
        md,
        "- Command: `bench/run` (`spa-bench {}`)\n",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    md.push_str("| Measure |");
    for k in kinds {
        let _ = write!(md, " {} |", k.heading());
    }
    md.push_str(" Target (spad) |\n|---|");
    for _ in kinds {
        md.push_str("---|");
    }
    md.push_str("---|\n");
    for r in &rows {
        let _ = write!(md, "| {} |", r.label);
        for c in &r.cells {
            let _ = write!(md, " {c} |");
        }
        let _ = writeln!(md, " {} |", r.target);
    }

    md.push_str("\n## Targets (spad)\n\n");
    for line in targets(kinds, results) {
        let _ = writeln!(md, "- {line}");
    }
    let errors: Vec<String> = kinds
        .iter()
        .flat_map(|&k| get(k).errors.iter().map(move |(p, e)| format!("{} / {p:?}: {e}", k.name())))
        .collect();
    if !errors.is_empty() {
        md.push_str("\n## Failed measurements\n\n");
        for e in errors {
            // The first line says what failed; the daemon's log tail went to stderr (and to
            // --logs).
            let _ = writeln!(md, "- {}", e.lines().next().unwrap_or(""));
        }
    }
    md.push_str(&method(opts));
    md
}

fn targets(kinds: &[Kind], results: &BTreeMap<Kind, Results>) -> Vec<String> {
    let mut out = Vec::new();
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    for &k in kinds.iter().filter(|k| k.is_spad()) {
        let Some(r) = results.get(&k) else { continue };
        let name = k.heading();
        if let Some(l) = &r.latency {
            let ok = l.summary.n == l.knocks
                && l.summary.median.is_some_and(|m| m <= Duration::from_millis(1))
                && l.summary.p99.is_some_and(|p| p <= Duration::from_millis(5));
            out.push(format!(
                "{name}: open latency median ≤ 1 ms and p99 ≤ 5 ms: {} ({} / {} ms)",
                verdict(ok),
                ms(l.summary.median),
                ms(l.summary.p99)
            ));
        }
        if let Some(f) = &r.flood {
            let ok = f.summary.n == f.knocks && f.summary.p99.is_some_and(|p| p <= Duration::from_millis(20));
            out.push(format!(
                "{name}: {} of {} granted under flood with p99 ≤ 20 ms: {} ({} of {}, p99 {} ms)",
                f.knocks,
                f.knocks,
                verdict(ok),
                f.summary.n,
                f.knocks,
                ms(f.summary.p99)
            ));
        }
        for (rate, f) in &r.selfflood {
            out.push(format!(
                "{name}: {n} of {n} granted with junk from the client's own address at {}: {} ({} of {n})",
                rate_label(*rate),
                verdict(f.summary.n == f.knocks),
                f.summary.n,
                n = f.knocks,
            ));
        }
        if let Some(s) = &r.scale {
            if let Some(l) = s.levels.iter().find(|l| l.target == 100_000) {
                let ok = l.probe.median.is_some_and(|m| m <= Duration::from_micros(500));
                out.push(format!(
                    "{name}: grant apply median ≤ 0.5 ms at 100,000 active grants: {} ({} ms)",
                    verdict(ok),
                    ms(l.probe.median)
                ));
            }
            if let Some(f) = s.idle_fraction {
                out.push(format!(
                    "{name}: idle CPU near zero with {} grants: {} ({:.3} % of a core)",
                    s.levels.last().map_or(0, |l| l.active),
                    verdict(f < 0.001),
                    f * 100.0
                ));
            }
        }
    }
    out
}

fn method(opts: &Opts) -> String {
    let rates = |r: &[FloodRate]| r.iter().map(|&r| rate_label(r)).collect::<Vec<_>>().join(", ");
    let conntrack_max = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max")
        .map_or_else(|_| "conntrack not loaded".to_owned(), |t| format!("`nf_conntrack_max` = {}", t.trim()));
    let mut m = String::from("\n## How it was measured\n\n");
    let lines = [
        "Lab: `spa_e2e::GatewayLab` (network namespaces; client, attacker and gateway joined by veth pairs). Each phase runs against a fresh lab and a freshly started daemon (the self-flood phase: one for every rate). The gateway has reverse-path filtering off (`net.ipv4.conf.{all,default,c0,a0,i0}.rp_filter = 0`, set explicitly: new namespaces take the host's IPv4 setting), because fill knocks come from sources it has no route to.".to_owned(),
        "Client: packets built in-process with `spa_engine::packet::seal` (AES-CBC, SHA-256 digest, HMAC-SHA256, a random 32-byte key and 64-byte HMAC key per run, as `fwknop --key-gen` makes them); the same bytes go to both daemons. Measured knocks come from the client's own address (10.201.1.2), at most about 25 per second (within spad's per-source budget), and ask (like `spa -a`) for a distinct address of the client each, so no grant of an earlier knock can open the port for a later one.".to_owned(),
        format!("Fill knocks (scale levels, CPU per valid knock) come from many packet sources, one per grant, as 100,000 grants do in real life: the client owns all of `10.64.0.0/10` through one local route (`ip route add local 10.64.0.0/10 dev lo`, \"AnyIP\"), and every fill knock leaves one socket from its own address there (`sendmsg` with an `IP_PKTINFO` control message whose `ipi_spec_dst` is the source) and asks for that same address. So each source stays far below spad's per-source budget for authenticated requests, where knocks from one address would be held to 50/s. Nothing is sent back to these addresses, and no route back is needed. fwknopd gets the same packets. In socket mode every fill knock leaves a UDP conntrack entry in the gateway ({conntrack_max} on this host; it must exceed the top scale level)."),
        "Open latency: from the knock's `send` to the first completed TCP connect from that address to the protected port (tcp/22 on the gateway, a server run by the bench). A new non-blocking connect starts every 100 µs, all polled together, so no SYN retransmit hides the figure; resolution ≈ 0.1 ms. Before each knock a 20 ms connect storm from the same address must fail (the port is really closed). A knock not open after 3 s (spad) or 10 s (fwknopd), 2 s under flood, counts as not granted. p99 is nearest-rank (with fewer than 100 samples it is the largest). The first knock after a daemon starts is shown apart too.".to_owned(),
        "spad: its shipped defaults, `[limits]` included (`per_source_rate = 50`, `per_source_burst = 100` authenticated requests per packet source; reject lines 50/s in all and a fifth of that per source, the rest counted in summaries), apart from what the lab needs: `[firewall] backend = \"nft\"` and `[firewall.nft] protect = [\"tcp/22\"]` (there is no default backend, and nothing is protected by default); in capture mode `[listen] mode = \"capture\"`, `interfaces = [\"c0\", \"a0\"]` (there are no default interfaces; the attacker arrives on a0) and `udp/62201` protected too (nothing listens there, so the gateway would answer every junk packet with an ICMP error); `[replay] state_dir` and `[log] audit` in a fresh private directory (a fresh replay cache per run; the bench counts grants and rejects from the audit trail); one stanza, `source = \"any\"`, `open_ports = [\"tcp/22\"]`, `fw_access_timeout = 3600` (grants must last the whole phase: fills take minutes). The configuration file is created mode 0600.".to_owned(),
        "fwknopd (Debian 2.6.10): defaults except `PCAP_INTF any` (the attacker arrives on another link than the client), its run directory, and the stanza (`SOURCE ANY`, `OPEN_PORTS tcp/22`, `FW_ACCESS_TIMEOUT`/`MAX_FW_TIMEOUT 3600`); iptables backend (iptables-nft). The gateway's INPUT chain has fwknopd's jump first, then DROP for tcp/22 and udp/62201. Its files are mode 0600.".to_owned(),
        format!("Flood: `spa-flood` in the attacker namespace sends base64 junk of 150–250 characters to the gateway's SPA port with `sendmmsg` at full speed for the whole phase; after 1 s of it, {} knocks go {} ms apart. 'Handled' comes from the daemon's own log (spad: audit rejects and reject summaries; fwknopd: one 'Error creating fko context' line per junk packet).", opts.flood_knocks, opts.flood_spacing_ms),
        format!("Junk from the client's own address: `spa-flood` runs in the client namespace, so its junk carries the client's address (10.201.1.2) as source, the one the measured knocks come from, and goes to the address the client knocks on, at {} (spad) and {} (fwknopd; at full speed its 1,000 packets/s capture loop loses knocks to any flood, which the attacker flood shows already). After 1 s of junk the client knocks {} times, {} ms apart, each for a new grant; a knock not open after 2 s counts as not granted. Anyone who can spoof a client's address can send this junk, so every knock must still be granted: a daemon that charges a per-source budget for every datagram before the HMAC check lets such junk starve the client (spad did until the limit moved behind the HMAC). 'Handled' as for the flood; 'rate_limited' is what spad refused as over a per-source budget.", rates(&opts.selfflood_rates), rates(&opts.fwknopd_selfflood_rates), opts.selfflood_knocks, opts.flood_spacing_ms),
        "CPU: utime+stime (plus reaped children) of the daemon and its live descendants (fwknopd's `iptables` runs, spad's `nft` process) from `/proc`, over the work, minus the idle rate measured just before, divided by the packets the daemon handled. After the junk flood the bench waits until the daemon's log has stopped growing for 1.5 s (fwknopd works off junk queued in its capture buffer for seconds after the flood, at low CPU), so the junk count includes that backlog and no valid knock waits behind it. Valid knocks are fill knocks (above): each from and for a new address, so every one changes the firewall.".to_owned(),
        "Scale: the firewall is filled with fill knocks (above), sent at most a window ahead of the daemon's grants; at each level further knocks from the client's own address are measured as above. spad's scale is measured in socket mode only (the grant path does not depend on the receive mode). fwknopd is filled only within a time budget; where it stops, the table says how far it got.".to_owned(),
        format!("Replay: one valid knock, then the same bytes {} more times (spad at {} pkt/s, fwknopd at {} pkt/s, below its 1,000 pkt/s capture loop).", opts.replays, opts.replay_rate, opts.fwknopd_replay_rate),
        "Noise: the machine's cores are shared by the flood generator, the client, the daemon, the kernel's packet path and possibly other work; single runs vary by tens of percent.".to_owned(),
    ];
    for l in lines {
        let _ = writeln!(m, "- {l}");
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        let s = Summary::of(&[Duration::from_micros(800), Duration::from_micros(1200)]);
        assert_eq!(med_p99(&s, 2), "0.800 / 1.200 ms");
        assert_eq!(med_p99(&s, 3), "0.800 / 1.200 ms (2 of 3 opened)");
        assert_eq!(med_p99(&Summary::default(), 20), "none of 20 opened");
    }

    fn round(opened: usize, knocks: usize, limited: u64) -> Flood {
        let samples = vec![Duration::from_micros(500); opened];
        Flood {
            knocks,
            summary: Summary::of(&samples),
            daemon_grants: opened as u64,
            report: crate::phases::FloodReport { sent: 1000, secs: 10.0, rate: 100.0 },
            handled: 1000,
            limited,
            ..Flood::default()
        }
    }

    #[test]
    fn a_self_flood_round_that_loses_knocks_is_shown_and_missed() {
        use clap::Parser as _;
        let opts = Opts::parse_from(["spa-bench", "--only", "selfflood", "--daemons", "spad-socket"]);
        let progs = Programs {
            spad: "/nonexistent/spad".into(),
            flood: "/nonexistent/spa-flood".into(),
            fwknopd: "/nonexistent/fwknopd".into(),
            spad_backend: "nft".into(),
            logs: None,
        };
        let mut results = BTreeMap::new();
        let r = Results {
            selfflood: vec![(FloodRate(None), round(4, 20, 1016)), (FloodRate(Some(100)), round(20, 20, 0))],
            ..Results::default()
        };
        results.insert(Kind::SpadSocket, r);
        let md = render(&opts, &progs, &[Kind::SpadSocket], &results);
        let at_100 = "| Junk from the client's own address at 100 pkt/s: knocks granted (of 20) | 20 of 20 | 20 of 20 |";
        let at_max = "| Junk from the client's own address at full speed: knocks granted (of 20) | 4 of 20 | 20 of 20 |";
        let (i100, imax) = (md.find(at_100), md.find(at_max));
        assert!(i100.is_some() && imax.is_some(), "{md}");
        assert!(i100 < imax, "fixed rates come before full speed:\n{md}");
        assert!(md.contains("100 pkt/s / 100 pkt/s (100 %); 1,016 refused as rate_limited"), "{md}");
        assert!(md.contains("at full speed: MISSED (4 of 20)"), "{md}");
        assert!(md.contains("at 100 pkt/s: met (20 of 20)"), "{md}");
        assert!(!md.contains("1000000000") && !md.contains("1e9"), "no limits switched off:\n{md}");
    }
}
