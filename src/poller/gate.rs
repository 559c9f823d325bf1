//! The pause gates: the state machine that decides whether a ticket may be polled now, and how
//! each poll's outcome moves it. One [`Gate`] pauses all polling (our credentials, signature or
//! clock are rejected, or the API is in an outage), one per workspace pauses that workspace
//! (access denied). A paused gate lets one probe through when its pause ends and opens on the
//! first answer that is not a failure of the same kind.
//!
//! Nothing here does IO: [`Gates::admit`] says whether a ticket goes or is held, and
//! [`Gates::observe`] returns, as data, the [`Verdict`] for [`super::decide`] and whether the
//! workspace's waiting tickets are to be postponed, for the poll loop to carry out.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::{error, info, warn};

use super::to_chrono;
use crate::backoff::Schedule;
use crate::flink::FlinkError;

/// Transient failures in a row, across tickets, that make an outage and pause all polling.
pub const OUTAGE_THRESHOLD: u32 = 5;

/// What the gates say about one ticket: held back by a pause, or let through (and then, after
/// its outcome, when the pauses it may belong to end).
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// A paused gate holds the ticket back; no request is made.
    Held(Hold),
    /// The request went out; the pauses as they stand after its outcome.
    Passed(PauseEnds),
}

/// When each pause a ticket may wait for ends, after a poll's outcome moved the gates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PauseEnds {
    /// The end of the global pause, if polling is paused.
    pub global: Option<DateTime<Utc>>,
    /// The end of the pause of the ticket's workspace, if it is paused.
    pub workspace: Option<DateTime<Utc>>,
}

/// A ticket must wait for a paused gate.
#[derive(Debug, Clone, PartialEq)]
pub struct Hold {
    /// When it may be polled again.
    pub until: DateTime<Utc>,
    /// (code, message) of the rejection that paused the gate, shown on the ticket.
    pub reason: (String, String),
}

/// What a poll's outcome did to the gates.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// The verdict on the polled ticket, for `decide`.
    pub verdict: Verdict,
    /// The workspace's pause end, when its waiting tickets are to be postponed to it.
    pub postpone_workspace_until: Option<DateTime<Utc>>,
}

/// Who an error that pauses polling is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseScope {
    /// Our credentials, signature or clock: every ticket waits.
    Global,
    /// Access to this ticket's workspace: that workspace's tickets wait.
    Workspace,
}

/// Why polling is paused globally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseCause {
    /// The API rejects our credentials, signature, clock or request.
    Rejected,
    /// The API is unreachable or failing: network errors, 5xx, throttling, unreadable error pages.
    Unavailable,
    /// The API answers 2xx with bodies we cannot read: it changed, or something in the way did.
    Unreadable,
}

impl PauseCause {
    /// One sentence for `/readyz`.
    pub fn describe(self) -> &'static str {
        match self {
            PauseCause::Rejected => "polling paused: the API rejects our credentials, signature or clock",
            PauseCause::Unavailable => {
                "polling paused: the API is unavailable (network errors, 5xx or throttling); probing until it answers"
            }
            PauseCause::Unreadable => {
                "polling paused: the API's answers cannot be read (has the API changed?); probing until it answers"
            }
        }
    }

    fn code(self) -> u8 {
        match self {
            PauseCause::Rejected => 1,
            PauseCause::Unavailable => 2,
            PauseCause::Unreadable => 3,
        }
    }

    fn from_code(code: u8) -> Option<PauseCause> {
        match code {
            1 => Some(PauseCause::Rejected),
            2 => Some(PauseCause::Unavailable),
            3 => Some(PauseCause::Unreadable),
            _ => None,
        }
    }
}

/// A pause switch: closed while the API rejects us, with one probe allowed through each time a
/// pause ends.
#[derive(Debug, Default)]
pub struct Gate {
    paused: Option<PauseState>,
}

#[derive(Debug, Clone)]
struct PauseState {
    /// When the pause began, for the log line that ends it.
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    streak: u32,
    probing: bool,
    /// (code, message) of the rejection, shown on the tickets that wait.
    reason: (String, String),
    /// What the last rejection was.
    cause: PauseCause,
}

impl Gate {
    /// Until when and why a ticket must wait, or `None` if it may go.
    fn hold(&self, now: DateTime<Utc>, probe_hold: Duration) -> Option<Hold> {
        let pause = self.paused.as_ref()?;
        let until = if now < pause.until {
            pause.until
        } else if pause.probing {
            now + to_chrono(probe_hold)
        } else {
            return None;
        };
        Some(Hold { until, reason: pause.reason.clone() })
    }

    /// Marks a probe as started if the gate is paused; returns whether this request is the probe.
    fn start_probe(&mut self) -> bool {
        match &mut self.paused {
            Some(pause) => {
                pause.probing = true;
                true
            }
            None => false,
        }
    }

    /// A call went through: opens the gate. Returns the cause and start of the pause it ends.
    fn accepted(&mut self) -> Option<(PauseCause, DateTime<Utc>)> {
        self.paused.take().map(|pause| (pause.cause, pause.since))
    }

    /// A call was rejected for `reason` (code, message) because of `cause`. Returns the pause end
    /// if this starts a new pause (to log it once).
    fn rejected(
        &mut self,
        now: DateTime<Utc>,
        schedule: &Schedule,
        probe: bool,
        reason: (String, String),
        cause: PauseCause,
    ) -> Option<DateTime<Utc>> {
        match &mut self.paused {
            None => {
                let until = now + to_chrono(schedule.ceiling(0));
                self.paused = Some(PauseState { since: now, until, streak: 0, probing: false, reason, cause });
                Some(until)
            }
            Some(pause) if probe => {
                pause.streak = pause.streak.saturating_add(1);
                pause.until = now + to_chrono(schedule.ceiling(pause.streak));
                pause.probing = false;
                pause.reason = reason;
                pause.cause = cause;
                None
            }
            Some(_) => None,
        }
    }

    /// The probe neither confirmed nor refuted the pause (a network error): let another go.
    fn inconclusive(&mut self, probe: bool) {
        if let Some(pause) = &mut self.paused {
            if probe {
                pause.probing = false;
            }
        }
    }

    /// The pause as the operator pages show it, if paused.
    fn view(&self) -> Option<PauseView> {
        self.paused.as_ref().map(|pause| PauseView {
            cause: pause.cause,
            since: pause.since,
            until: pause.until,
            probing: pause.probing,
            reason: pause.reason.clone(),
        })
    }

    /// Current pause end, if paused.
    pub fn paused_until(&self) -> Option<DateTime<Utc>> {
        self.paused.as_ref().map(|pause| pause.until)
    }
}

/// The global gate and one per workspace.
#[derive(Debug, Default)]
pub struct Gates {
    global: Gate,
    workspaces: HashMap<String, Gate>,
    /// Transient failures in a row across all tickets; any answer that is not one resets it.
    transient_in_a_row: u32,
}

/// One pause as the operator pages show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PauseView {
    /// Why it began (the last rejection's kind).
    pub cause: PauseCause,
    /// When it began.
    pub since: DateTime<Utc>,
    /// When the next probe may go (or went, while `probing`).
    pub until: DateTime<Utc>,
    /// Whether the probe is out now.
    pub probing: bool,
    /// (code, message) of the rejection that paused it.
    pub reason: (String, String),
}

/// Every pause standing now: the global one and each paused workspace's (sorted by workspace).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PauseReport {
    /// The global pause, if polling is paused.
    pub global: Option<PauseView>,
    /// (workspace, its pause).
    pub workspaces: Vec<(String, PauseView)>,
}

/// Whether and why polling is globally paused, readable from outside (readiness, metrics).
#[derive(Debug, Default)]
pub struct PauseFlag(std::sync::atomic::AtomicU8);

impl PauseFlag {
    /// Why every ticket is paused; `None` while polling runs.
    pub fn cause(&self) -> Option<PauseCause> {
        PauseCause::from_code(self.0.load(Ordering::Relaxed))
    }

    pub(super) fn set(&self, cause: Option<PauseCause>) {
        self.0.store(cause.map_or(0, PauseCause::code), Ordering::Relaxed);
    }
}

/// Whether a poll was let through as the probe of the global gate and of its workspace's gate.
#[derive(Debug, Clone, Copy, Default)]
pub struct Probes {
    /// The probe of the global pause.
    pub global: bool,
    /// The probe of the workspace's pause.
    pub workspace: bool,
}

impl Gates {
    /// Whether a ticket of `workspace` may be polled at `now`: `Ok` with the probes it is (a gate
    /// whose pause ended lets this one request through), or `Err` with the hold that keeps it back.
    /// `probe_hold` is how long tickets wait while a probe is out.
    pub fn admit(&mut self, workspace: &str, now: DateTime<Utc>, probe_hold: Duration) -> Result<Probes, Hold> {
        let hold = self
            .global
            .hold(now, probe_hold)
            .or_else(|| self.workspaces.get(workspace).and_then(|gate| gate.hold(now, probe_hold)));
        match hold {
            Some(hold) => Err(hold),
            None => Ok(Probes {
                global: self.global.start_probe(),
                workspace: self.workspaces.get_mut(workspace).is_some_and(Gate::start_probe),
            }),
        }
    }

    /// The pauses standing now.
    pub fn report(&self) -> PauseReport {
        let mut workspaces = self
            .workspaces
            .iter()
            .filter_map(|(workspace, gate)| gate.view().map(|view| (workspace.clone(), view)))
            .collect::<Vec<_>>();
        workspaces.sort_by(|a, b| a.0.cmp(&b.0));
        PauseReport { global: self.global.view(), workspaces }
    }

    /// Why polling is globally paused, if it is.
    pub fn global_cause(&self) -> Option<PauseCause> {
        self.global.paused.as_ref().map(|pause| pause.cause)
    }

    /// Moves the gates on what a poll of a ticket in `workspace` came to, and returns the verdict
    /// on that ticket and whether the workspace's waiting tickets are to be postponed.
    pub fn observe(
        &mut self,
        workspace: &str,
        outcome: Result<(), &FlinkError>,
        now: DateTime<Utc>,
        probes: Probes,
        pause_schedule: &Schedule,
    ) -> Observed {
        let Probes { global: global_probe, workspace: workspace_probe } = probes;
        let Gates { global, workspaces, transient_in_a_row } = self;
        let mut postpone_workspace_until = None;
        match outcome {
            // Raised here before any request was sent (a region, header value or path we
            // cannot use): it says nothing about whether the API accepts us.
            Err(error @ FlinkError::Ticket(_)) if !error.answered() => {
                global.inconclusive(global_probe);
                if let Some(gate) = workspaces.get_mut(workspace) {
                    gate.inconclusive(workspace_probe);
                }
            }
            Ok(_) | Err(FlinkError::Ticket(_)) => {
                *transient_in_a_row = 0;
                if let Some((cause, since)) = global.accepted() {
                    let paused_ms = (now - since).num_milliseconds().max(0);
                    match cause {
                        PauseCause::Rejected => {
                            info!(paused_ms, "polling resumed: the API accepted our requests again");
                        }
                        PauseCause::Unavailable | PauseCause::Unreadable => {
                            info!(paused_ms, "polling resumed: the API answers again");
                        }
                    }
                }
                if workspaces.get_mut(workspace).is_some_and(|gate| gate.accepted().is_some()) {
                    info!("workspace access restored; its tickets are polled again");
                }
            }
            Err(error @ (FlinkError::Credentials(_) | FlinkError::Config(_))) => {
                if error.answered() {
                    *transient_in_a_row = 0;
                }
                let reason = (error.code(), error.message());
                if let Some(until) = global.rejected(now, pause_schedule, global_probe, reason, PauseCause::Rejected) {
                    error!(
                        error_code = %error.code(),
                        request_id = error.request_id().unwrap_or(""),
                        error = %error,
                        paused_until = %crate::clock::format_instant(until),
                        "polling paused: the API rejects our requests (credentials, signature, clock or request); \
                         no ticket is failed for this, and polling resumes once a request is accepted"
                    );
                }
                if let Some(gate) = workspaces.get_mut(workspace) {
                    gate.inconclusive(workspace_probe);
                }
            }
            Err(error @ FlinkError::AccessDenied(_)) => {
                *transient_in_a_row = 0;
                if let Some((cause, _)) = global.accepted() {
                    info!(?cause, "polling resumed: the API answers again");
                }
                let gate = workspaces.entry(workspace.to_owned()).or_default();
                let reason = (error.code(), error.message());
                if let Some(until) = gate.rejected(now, pause_schedule, workspace_probe, reason, PauseCause::Rejected) {
                    error!(
                        error_code = %error.code(),
                        request_id = error.request_id().unwrap_or(""),
                        error = %error,
                        paused_until = %crate::clock::format_instant(until),
                        "workspace paused: access denied; its tickets wait until access is granted or their deadline"
                    );
                }
                postpone_workspace_until = gate.paused_until();
            }
            Err(
                error @ (FlinkError::Network(_)
                | FlinkError::Transient(_)
                | FlinkError::RateLimited { .. }
                | FlinkError::Decode(_)),
            ) => {
                *transient_in_a_row = transient_in_a_row.saturating_add(1);
                if let Some(gate) = workspaces.get_mut(workspace) {
                    gate.inconclusive(workspace_probe);
                }
                // A failed probe keeps the pause, growing; enough failures in a row start one.
                if global_probe || *transient_in_a_row >= OUTAGE_THRESHOLD {
                    let cause = match error {
                        FlinkError::Decode(_) => PauseCause::Unreadable,
                        _ => PauseCause::Unavailable,
                    };
                    let reason = (error.code(), error.message());
                    if let Some(until) = global.rejected(now, pause_schedule, global_probe, reason, cause) {
                        log_outage(error, cause, *transient_in_a_row, until);
                    }
                }
            }
        }
        let pauses = PauseEnds {
            global: global.paused_until(),
            workspace: workspaces.get(workspace).and_then(Gate::paused_until),
        };
        Observed { verdict: Verdict::Passed(pauses), postpone_workspace_until }
    }
}

/// The one line that starts an outage episode: at `error` when the API's 2xx answers cannot be
/// read (a person should look), else at `warn`.
fn log_outage(error: &FlinkError, cause: PauseCause, failures: u32, until: DateTime<Utc>) {
    let paused_until = crate::clock::format_instant(until);
    match cause {
        PauseCause::Unreadable => error!(
            error_code = %error.code(),
            error = %error,
            failures,
            paused_until = %paused_until,
            "polling paused: the API answers with bodies that cannot be read (has the API changed?); \
             one probe at a time until it answers, and no ticket is failed for this"
        ),
        PauseCause::Unavailable | PauseCause::Rejected => warn!(
            error_code = %error.code(),
            error = %error,
            failures,
            paused_until = %paused_until,
            "polling paused: the API is unavailable; one probe at a time until it answers, and no ticket is \
             failed for this"
        ),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone as _;

    use super::*;
    use crate::flink::ApiError;
    use crate::poller::{Policy, PollSettings};

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap()
    }

    fn schedule() -> Schedule {
        Policy::from_settings(&PollSettings {
            initial_interval: Duration::from_secs(2),
            max_interval: Duration::from_secs(30),
            multiplier: 2.0,
            deadline: Duration::from_secs(3600),
            lease: Duration::from_secs(60),
            adaptive: true,
            target_lag: 0.1,
        })
        .pause
    }

    fn api(code: &str) -> ApiError {
        ApiError {
            http_status: Some(400),
            code: Some(code.to_owned()),
            message: Some("m".to_owned()),
            request_id: Some("Q".to_owned()),
        }
    }

    fn local(message: &str) -> FlinkError {
        FlinkError::Ticket(ApiError {
            code: Some("InvalidTicket".to_owned()),
            message: Some(message.to_owned()),
            ..ApiError::default()
        })
    }

    #[test]
    fn a_poll_refused_before_any_request_is_sent_never_reopens_a_paused_gate() {
        let schedule = schedule();
        let mut gates = Gates::default();
        let rejected = FlinkError::Config(api("SignatureDoesNotMatch"));
        gates.observe("ws", Err(&rejected), now(), Probes::default(), &schedule);
        let until = gates.global.paused_until().expect("paused");
        for error in [local("unknown region \"mars-1\""), local("the workspace header value is not valid in HTTP")] {
            assert!(gates.global.start_probe(), "the pause ended: this poll is the probe");
            gates.observe("ws", Err(&error), until, Probes { global: true, workspace: false }, &schedule);
            assert_eq!(gates.global.paused_until(), Some(until), "{error:?} reopened or moved the gate");
            assert!(gates.global.hold(until, Duration::from_secs(2)).is_none(), "another probe may go");
        }
        let answered = FlinkError::Ticket(api("TicketNotFound"));
        gates.observe("ws", Err(&answered), until, Probes { global: true, workspace: false }, &schedule);
        assert_eq!(gates.global.paused_until(), None, "an answer about a ticket is the API accepting us");
    }

    #[test]
    fn a_run_of_transient_failures_across_tickets_opens_the_circuit_and_a_good_answer_closes_it() {
        let schedule = schedule();
        let mut gates = Gates::default();
        let outage = FlinkError::Transient(ApiError { http_status: Some(502), ..ApiError::default() });
        let network = FlinkError::Network("connection refused".to_owned());
        for n in 1..OUTAGE_THRESHOLD {
            let error = if n % 2 == 0 { &outage } else { &network };
            gates.observe(&format!("ws-{n}"), Err(error), now(), Probes::default(), &schedule);
            assert_eq!(gates.global.paused_until(), None, "{n} failures are not an outage yet");
        }
        gates.observe("ws", Ok(()), now(), Probes::default(), &schedule);
        for _ in 1..OUTAGE_THRESHOLD {
            gates.observe("ws", Err(&outage), now(), Probes::default(), &schedule);
        }
        assert_eq!(gates.global.paused_until(), None, "a good answer restarted the count");
        gates.observe("ws", Err(&outage), now(), Probes::default(), &schedule);
        let until = gates.global.paused_until().expect("the circuit opened");
        assert_eq!(gates.global.paused.as_ref().map(|pause| pause.cause), Some(PauseCause::Unavailable));

        assert!(gates.global.start_probe());
        let garbage = FlinkError::Decode(ApiError { http_status: Some(200), ..ApiError::default() });
        gates.observe("ws", Err(&garbage), until, Probes { global: true, workspace: false }, &schedule);
        let longer = gates.global.paused_until().expect("still paused");
        assert_eq!(longer - until, chrono::Duration::seconds(4), "a failed probe doubles the pause");
        assert_eq!(gates.global.paused.as_ref().map(|pause| pause.cause), Some(PauseCause::Unreadable));

        assert!(gates.global.start_probe());
        gates.observe("ws", Ok(()), longer, Probes { global: true, workspace: false }, &schedule);
        assert_eq!(gates.global.paused_until(), None, "the first good answer closes the circuit");
    }

    #[test]
    fn a_gate_pauses_lets_one_probe_through_and_opens_on_acceptance() {
        let schedule = schedule();
        let hold = Duration::from_secs(2);
        let mut gate = Gate::default();
        let reason = || ("SignatureDoesNotMatch".to_owned(), "m".to_owned());
        let hold_until = |gate: &Gate, at| gate.hold(at, hold).map(|hold| hold.until);
        assert_eq!(hold_until(&gate, now()), None);
        let until = gate.rejected(now(), &schedule, false, reason(), PauseCause::Rejected).expect("a new pause");
        assert_eq!(until, now() + chrono::Duration::seconds(2));
        assert_eq!(
            gate.rejected(now(), &schedule, false, reason(), PauseCause::Rejected),
            None,
            "a second rejection in flight logs nothing"
        );
        assert_eq!(gate.hold(now(), hold), Some(Hold { until, reason: reason() }), "waiting tickets show why");
        assert_eq!(hold_until(&gate, until), None, "the pause ended: a probe may go");
        assert!(gate.start_probe());
        assert_eq!(hold_until(&gate, until), Some(until + chrono::Duration::seconds(2)), "others wait for the probe");
        assert_eq!(gate.rejected(until, &schedule, true, reason(), PauseCause::Rejected), None);
        assert_eq!(gate.paused_until(), Some(until + chrono::Duration::seconds(4)), "the pause doubles");
        assert!(gate.start_probe());
        assert_eq!(gate.accepted(), Some((PauseCause::Rejected, now())));
        assert_eq!(hold_until(&gate, until), None);
        assert_eq!(gate.accepted(), None);
    }
}
