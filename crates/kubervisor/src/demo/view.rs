//! The demo's terminal view: a redrawn table on a terminal, plain lines otherwise.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use super::Summary;

/// One pod as the view shows it.
#[derive(Clone, Debug)]
pub struct PodRow {
    pub name: String,
    pub traffic: String,
    /// Share of 500 answers since the previous frame; `None` when it got no request.
    pub error_rate: Option<f64>,
    pub retries: String,
    /// Seconds since it was ejected, when it has no traffic.
    pub since_seconds: Option<i64>,
}

/// What one frame shows.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub elapsed: Duration,
    pub rows: Vec<PodRow>,
    pub service_success_recent: f64,
    pub service_requests: u64,
    pub decisions: Vec<String>,
}

pub struct View {
    redraw: bool,
    notes: Vec<String>,
    printed_decisions: usize,
    last_status_line: Option<Duration>,
}

impl View {
    pub fn new(tui: bool) -> View {
        View {
            redraw: tui && std::io::stdout().is_terminal(),
            notes: Vec::new(),
            printed_decisions: 0,
            last_status_line: None,
        }
    }

    /// A line about the scenario itself.
    pub fn note(&mut self, line: String) {
        if !self.redraw {
            println!("demo: {line}");
        }
        self.notes.push(line);
    }

    pub fn render(&mut self, snapshot: &Snapshot) {
        if self.redraw {
            self.draw(snapshot);
            return;
        }
        for line in &snapshot.decisions[self.printed_decisions.min(snapshot.decisions.len())..] {
            println!("decision: {line}");
        }
        self.printed_decisions = snapshot.decisions.len();
        let due = self
            .last_status_line
            .is_none_or(|last| snapshot.elapsed >= last + Duration::from_secs(5));
        if due {
            self.last_status_line = Some(snapshot.elapsed);
            let states: Vec<String> = snapshot
                .rows
                .iter()
                .map(|r| format!("{}={}", short(&r.name), r.traffic))
                .collect();
            println!(
                "t={:>3}s service success {:>5.1}% | {}",
                snapshot.elapsed.as_secs(),
                snapshot.service_success_recent * 100.0,
                states.join(" ")
            );
        }
    }

    fn draw(&self, snapshot: &Snapshot) {
        let mut out = String::new();
        out.push_str("\x1b[H\x1b[2J");
        out.push_str(
            "Kubervisor demo: a simulated cluster, a real Prometheus, the operator at work\n\n",
        );
        for note in &self.notes {
            out.push_str(&format!("  {note}\n"));
        }
        out.push_str(&format!(
            "\n  t = {:>3} s   Service web: {:>5.1}% success over the last seconds ({} requests so far)\n\n",
            snapshot.elapsed.as_secs(),
            snapshot.service_success_recent * 100.0,
            snapshot.service_requests
        ));
        out.push_str(&format!(
            "  {:<16} {:<8} {:>12} {:>8} {:>8}\n",
            "POD", "TRAFFIC", "ERROR RATE", "RETRIES", "SINCE"
        ));
        for row in &snapshot.rows {
            let rate = row
                .error_rate
                .map_or("-".to_string(), |r| format!("{:.0}%", r * 100.0));
            let since = row
                .since_seconds
                .map_or("-".to_string(), |s| format!("{s}s"));
            let traffic = match row.traffic.as_str() {
                "yes" => "\x1b[32myes\x1b[0m     ".to_string(),
                "no" => "\x1b[31mno\x1b[0m      ".to_string(),
                "pause" => "\x1b[33mpause\x1b[0m   ".to_string(),
                other => format!("{other:<8}"),
            };
            out.push_str(&format!(
                "  {:<16} {} {:>12} {:>8} {:>8}\n",
                row.name, traffic, rate, row.retries, since
            ));
        }
        out.push_str("\n  Decisions:\n");
        let start = snapshot.decisions.len().saturating_sub(10);
        for line in &snapshot.decisions[start..] {
            out.push_str(&format!("  {line}\n"));
        }
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(out.as_bytes());
        let _ = stdout.flush();
    }

    pub fn summary(&self, summary: &Summary) {
        println!();
        println!("Summary ({}):", summary.detector);
        println!(
            "  pods ejected {}, re-activated {}, paused {}, killed {}",
            summary.ejected, summary.reactivated, summary.paused, summary.killed
        );
        println!(
            "  Service success rate: before {:.1}%, during {:.1}%, after {:.1}%",
            summary.success_before * 100.0,
            summary.success_during * 100.0,
            summary.success_after * 100.0
        );
    }
}

fn short(name: &str) -> &str {
    name.rsplit('-').next().unwrap_or(name)
}
