//! The one decision about a claimed ticket: [`decide`] maps (ticket, poll outcome, the gates'
//! verdict, now, policy, jitter) to a [`Decision`] the store consumes as it is: finish,
//! reschedule, pause, hold or expire. No IO lives here, so plain `#[test]`s cover it.
//!
//! No transient failure ever fails a ticket; at worst it expires at its deadline.

use std::time::Duration;

use chrono::{DateTime, DurationRound as _, Utc};

use super::gate::{Hold, PauseScope, Verdict};
use super::learned::{LearnedPoll, LearnedSchedule, MIN_SAMPLES};
use super::{PollSettings, to_chrono};
use crate::backoff::{Schedule, honour_retry_after};
use crate::domain::{Outcome, TicketState};
use crate::flink::{FlinkError, Polled};
use crate::store::{Finish, Reschedule, Ticket};

/// Shortest wait of the pause schedule, however short `poll.initial_interval` is: tickets held
/// while polling is paused are put back for at least this long, so that they are not claimed and
/// put back over and over until the probe answers.
pub const MIN_PAUSE_INTERVAL: Duration = Duration::from_millis(100);

/// The schedules [`decide`] draws delays from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Between polls of a ticket that is still running.
    pub running: Schedule,
    /// Between retries after failed calls.
    pub errors: Schedule,
    /// Between probes while polling is paused.
    pub pause: Schedule,
    /// Whether running tickets follow a learned schedule when one is given (`poll.adaptive`).
    pub adaptive: bool,
}

impl Policy {
    /// The schedules derived from `[poll]`: running tickets follow it as configured, failed calls
    /// back off twice as fast up to twice the cap, and pauses grow up to ten times the cap,
    /// starting at no less than [`MIN_PAUSE_INTERVAL`].
    pub fn from_settings(poll: &PollSettings) -> Policy {
        let pause_initial = poll.initial_interval.max(MIN_PAUSE_INTERVAL);
        Policy {
            running: Schedule { initial: poll.initial_interval, max: poll.max_interval, multiplier: poll.multiplier },
            errors: Schedule { initial: poll.initial_interval, max: poll.max_interval * 2, multiplier: 2.0 },
            pause: Schedule {
                initial: pause_initial,
                max: (poll.max_interval * 10).max(pause_initial),
                multiplier: 2.0,
            },
            adaptive: poll.adaptive,
        }
    }
}

/// What to do with a claimed ticket: the store consumes each arm as it is.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Record the final state (an answer that ends it, an error about the ticket, or expiry).
    Finish(Finish),
    /// Poll again later.
    Reschedule(Reschedule),
    /// The error is not about this ticket: keep it pending, unchanged but for the error columns,
    /// until the pause of `scope` ends (or its deadline, if that comes first).
    Pause {
        /// Who is paused.
        scope: PauseScope,
        /// What to record: the pause's end as the next poll, the error to show.
        reschedule: Reschedule,
    },
    /// A paused gate held the ticket back without a request: it waits for the pause to end (or
    /// its deadline), showing why.
    Hold(Reschedule),
}

/// Decides what happens to a claimed `ticket` at `now`: the poll's `outcome` (`None` when no
/// request was made) and the gates' `verdict` on it give a finish, a reschedule, a pause, a hold
/// or an expiry. `jitter` is a uniform draw from `[0, 1)`. Pure: the same inputs always give the
/// same decision.
pub fn decide(
    ticket: &Ticket,
    outcome: Option<Result<&Polled, &FlinkError>>,
    verdict: &Verdict,
    now: DateTime<Utc>,
    policy: &Policy,
    jitter: f64,
    learned: Option<&LearnedSchedule>,
) -> Decision {
    let deadline = ticket.deadline();
    let past_deadline = deadline.is_some_and(|deadline| now >= deadline);
    let not_after_deadline = |at: DateTime<Utc>| deadline.map_or(at, |deadline| at.min(deadline));
    let (outcome, pauses) = match (verdict, outcome) {
        (Verdict::Passed(pauses), Some(outcome)) => (outcome, pauses),
        (Verdict::Held(Hold { until, reason }), _) => {
            return held(ticket, *until, Some(reason.clone()), past_deadline, not_after_deadline);
        }
        // Nothing was asked and nothing holds the ticket: it is due again after the shortest
        // pause, as it was.
        (Verdict::Passed(_), None) => {
            let until = now + to_chrono(policy.pause.initial);
            return held(ticket, until, None, past_deadline, not_after_deadline);
        }
    };
    match outcome {
        Ok(polled) => {
            let answer = &polled.answer;
            let finish = |state, error| {
                Decision::Finish(Finish {
                    state,
                    polled: true,
                    request_id: polled.request_id.clone(),
                    answer: Some(answer.clone()),
                    error,
                })
            };
            match answer.result.outcome() {
                Outcome::Succeeded => finish(TicketState::Succeeded, None),
                Outcome::Failed { error } => finish(TicketState::Failed, error),
                Outcome::Running if past_deadline => finish(TicketState::Expired, None),
                Outcome::Running => {
                    let learned = learned.filter(|_| policy.adaptive);
                    let (planned, placement) =
                        next_running_poll(ticket.created_at, ticket.running_streak, now, policy, learned, jitter);
                    let next_poll_at = not_after_deadline(planned);
                    let mut note = placement_note(&placement, learned, policy);
                    if next_poll_at < planned {
                        note.push_str("; the deadline comes first");
                    }
                    Decision::Reschedule(Reschedule {
                        next_poll_at,
                        running_streak: ticket.running_streak.saturating_add(1),
                        error_streak: 0,
                        polled: true,
                        request_id: polled.request_id.clone(),
                        answer: Some(answer.clone()),
                        error: None,
                        running_seen_ms: Some((now - ticket.created_at).num_milliseconds().max(0)),
                        note,
                    })
                }
            }
        }
        Err(error) => {
            let recorded = (error.code(), error.message());
            let request_id = error.request_id().map(str::to_owned);
            let fail = |state| {
                Decision::Finish(Finish {
                    state,
                    polled: true,
                    request_id: request_id.clone(),
                    answer: None,
                    error: Some(recorded.clone()),
                })
            };
            match error {
                FlinkError::Ticket(_) => fail(TicketState::Failed),
                _ if past_deadline => fail(TicketState::Expired),
                FlinkError::Credentials(_) | FlinkError::Config(_) | FlinkError::AccessDenied(_) => {
                    let (scope, until) = match error {
                        FlinkError::AccessDenied(_) => (PauseScope::Workspace, pauses.workspace),
                        _ => (PauseScope::Global, pauses.global),
                    };
                    let until = until.unwrap_or(now + to_chrono(policy.pause.initial));
                    let whom = match scope {
                        PauseScope::Workspace => "this workspace",
                        PauseScope::Global => "all polling",
                    };
                    Decision::Pause {
                        scope,
                        reschedule: Reschedule {
                            next_poll_at: not_after_deadline(until),
                            running_streak: ticket.running_streak,
                            error_streak: ticket.error_streak,
                            polled: true,
                            request_id,
                            answer: None,
                            running_seen_ms: None,
                            note: deadline_note(
                                format!("{whom} paused after {}", recorded.0),
                                until,
                                &not_after_deadline,
                            ),
                            error: Some(recorded),
                        },
                    }
                }
                // Transient, however long it lasts: never the ticket's failure.
                FlinkError::Network(_)
                | FlinkError::Decode(_)
                | FlinkError::Transient(_)
                | FlinkError::RateLimited { .. } => {
                    let scheduled = policy.errors.delay(streak(ticket.error_streak), jitter);
                    let hint = match error {
                        FlinkError::RateLimited { retry_after, .. } => *retry_after,
                        _ => None,
                    };
                    // A hint never pushes a poll past the longest pause: times beyond that are
                    // taken for the product of a wall-clock step back and made due again.
                    let delay = honour_retry_after(scheduled, hint).min(policy.pause.max);
                    let errors = ticket.error_streak.saturating_add(1);
                    let note = match hint {
                        Some(hint) => {
                            format!("retry after {}: the server asked to wait {}", recorded.0, seconds(hint))
                        }
                        None => format!("retry after {} (backoff, {errors} failed calls in a row)", recorded.0),
                    };
                    let planned = now + to_chrono(delay);
                    Decision::Reschedule(Reschedule {
                        next_poll_at: not_after_deadline(planned),
                        running_streak: ticket.running_streak,
                        error_streak: errors,
                        polled: true,
                        request_id,
                        answer: None,
                        running_seen_ms: None,
                        note: deadline_note(note, planned, &not_after_deadline),
                        error: Some(recorded),
                    })
                }
            }
        }
    }
}

/// Share of the wait to a learned poll that jitter may add, so that tickets enqueued together do
/// not all ask at the same instant. Only ever later: a poll must land at or past its planned
/// instant, or the schedule would plan the same instant again.
pub const LEARNED_JITTER: f64 = 0.02;

/// How the next poll of a running ticket was placed (what `show` explains).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Placement {
    /// By the schedule learned from earlier tickets of the same kind and place.
    Learned(LearnedPoll),
    /// By the fixed backoff (no learned schedule, or adaptive polling off); `running` answers so
    /// far.
    Backoff {
        /// "Still running" answers so far.
        running: u32,
    },
    /// By the fixed backoff, because the ticket has run past the learned range.
    PastLearned {
        /// "Still running" answers so far.
        running: u32,
    },
}

/// When to poll a ticket created at `created_at` that just answered "still running" at `now`
/// for the `running_streak`-th time in a row: at the `learned` schedule's next instant (plus a
/// jitter of up to [`LEARNED_JITTER`] of the wait, rounded up to the millisecond that instants
/// are stored in) while the ticket is within the learned range, otherwise on the fixed backoff.
/// Never later than `policy.running.max` after `now` (a poll cut short that way is followed by
/// the same planned instant). Pure: the same inputs give the same answer, so a restart that
/// rebuilds the same history from the table places the same polls.
pub fn next_running_poll(
    created_at: DateTime<Utc>,
    running_streak: i64,
    now: DateTime<Utc>,
    policy: &Policy,
    learned: Option<&LearnedSchedule>,
    jitter: f64,
) -> (DateTime<Utc>, Placement) {
    let running = streak(running_streak);
    let backoff = |placement| (now + to_chrono(policy.running.delay(running, jitter)), placement);
    let Some(schedule) = learned else { return backoff(Placement::Backoff { running }) };
    let elapsed = (now - created_at).to_std().unwrap_or(Duration::ZERO);
    let Some(poll) = schedule.next_after(elapsed) else { return backoff(Placement::PastLearned { running }) };
    let wait = poll.after_created.saturating_sub(elapsed);
    let wait = wait.mul_f64(1.0 + LEARNED_JITTER * jitter.clamp(0.0, 1.0));
    let planned = created_at + to_chrono(elapsed + wait);
    let whole_ms = planned.duration_round_up(chrono::Duration::milliseconds(1)).unwrap_or(planned);
    let at = whole_ms.min(now + to_chrono(policy.running.max));
    (at, Placement::Learned(poll))
}

/// A ticket kept back without a request until `until` (or its deadline), or expired if its
/// deadline passed; either way it shows `reason`.
fn held(
    ticket: &Ticket,
    until: DateTime<Utc>,
    reason: Option<(String, String)>,
    past_deadline: bool,
    not_after_deadline: impl Fn(DateTime<Utc>) -> DateTime<Utc>,
) -> Decision {
    if past_deadline {
        return Decision::Finish(Finish {
            state: TicketState::Expired,
            polled: false,
            request_id: None,
            answer: None,
            error: reason,
        });
    }
    let note = match &reason {
        Some((code, _)) => format!("held without a request while polling is paused ({code})"),
        None => "held without a request".to_owned(),
    };
    Decision::Hold(Reschedule {
        next_poll_at: not_after_deadline(until),
        running_streak: ticket.running_streak,
        error_streak: ticket.error_streak,
        polled: false,
        request_id: None,
        answer: None,
        running_seen_ms: None,
        note: deadline_note(note, until, &not_after_deadline),
        error: reason,
    })
}

/// Why a running ticket's next poll is where [`next_running_poll`] placed it, in words.
fn placement_note(placement: &Placement, learned: Option<&LearnedSchedule>, policy: &Policy) -> String {
    match *placement {
        Placement::Learned(poll) => {
            let (samples, median) =
                learned.map_or((0, Duration::ZERO), |schedule| (schedule.samples(), schedule.median()));
            format!(
                "learned schedule: poll {} of {}, {} after enqueue ({samples} finished tickets of this workspace, namespace and kind, median {})",
                poll.number,
                poll.of,
                seconds(poll.after_created),
                seconds(median),
            )
        }
        Placement::PastLearned { running } => format!(
            "backoff after {} running answers: running longer than the learned schedule covers ({})",
            running.saturating_add(1),
            seconds(learned.map_or(Duration::ZERO, LearnedSchedule::range_end)),
        ),
        Placement::Backoff { running } if policy.adaptive => format!(
            "backoff after {} running answers: fewer than {MIN_SAMPLES} finished tickets of this workspace, namespace and kind to learn from",
            running.saturating_add(1),
        ),
        Placement::Backoff { running } => {
            format!("backoff after {} running answers (poll.adaptive is off)", running.saturating_add(1))
        }
    }
}

/// `note`, plus a word when the deadline comes before `planned`.
fn deadline_note(
    mut note: String,
    planned: DateTime<Utc>,
    not_after_deadline: &impl Fn(DateTime<Utc>) -> DateTime<Utc>,
) -> String {
    if not_after_deadline(planned) < planned {
        note.push_str("; the deadline comes first");
    }
    note
}

/// A duration as people read it in a note: `1.5s`.
fn seconds(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}

fn streak(count: i64) -> u32 {
    u32::try_from(count.max(0)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone as _;
    use serde_json::json;

    use super::*;
    use crate::domain::{Answer, DeployResult, KindResult, RowId, TicketKey, ValidationIssue};
    use crate::flink::ApiError;
    use crate::poller::gate::PauseEnds;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap()
    }

    fn policy() -> Policy {
        Policy::from_settings(&PollSettings {
            initial_interval: Duration::from_secs(2),
            max_interval: Duration::from_secs(30),
            multiplier: 2.0,
            deadline: Duration::from_secs(3600),
            lease: Duration::from_secs(60),
            adaptive: true,
            target_lag: 0.1,
        })
    }

    #[test]
    fn a_pause_holds_tickets_for_at_least_100ms_however_short_the_initial_interval() {
        let fast = Policy::from_settings(&PollSettings {
            initial_interval: Duration::from_millis(1),
            max_interval: Duration::from_millis(2),
            multiplier: 2.0,
            deadline: Duration::from_secs(3600),
            lease: Duration::from_secs(60),
            adaptive: true,
            target_lag: 0.1,
        });
        assert_eq!(fast.pause.initial, MIN_PAUSE_INTERVAL);
        assert!(fast.pause.max >= MIN_PAUSE_INTERVAL);
        assert_eq!(fast.running.initial, Duration::from_millis(1), "running tickets keep the configured schedule");
        assert_eq!(policy().pause.initial, Duration::from_secs(2), "longer intervals are kept");
    }

    fn ticket(running_streak: i64, error_streak: i64, deadline: DateTime<Utc>) -> Ticket {
        Ticket {
            id: RowId(7),
            key: TicketKey { ticket_id: "t-1".to_owned(), namespace: "ns".to_owned(), workspace: "ws".to_owned() },
            kind: crate::domain::TicketKind::Deploy,
            region: None,
            webhook_url: None,
            deadline_at: Some(deadline),
            state: TicketState::Pending,
            ticket_status: None,
            deployment_id: None,
            deploy_success: None,
            message: None,
            validation_result: None,
            validation_errors: Vec::new(),
            config_errors: Vec::new(),
            resource_plan: None,
            result_json: None,
            error_code: None,
            error_message: None,
            polls: running_streak + error_streak,
            request_id: None,
            webhook_note: None,
            created_at: now() - chrono::Duration::hours(1),
            updated_at: now() - chrono::Duration::hours(1),
            next_poll_at: now(),
            finished_at: None,
            running_streak,
            error_streak,
            retries: 0,
            lease_owner: Some("test#1".to_owned()),
            lease_until: None,
            running_seen_ms: None,
            schedule_note: None,
        }
    }

    fn polled(status: &str, success: Option<bool>) -> Polled {
        Polled {
            request_id: Some("R".to_owned()),
            answer: Answer::from(DeployResult {
                ticket_status: Some(crate::domain::TicketStatus::from_wire(status)),
                deployment_id: success.filter(|success| *success).map(|_| "dep-1".to_owned()),
                success,
                ..DeployResult::default()
            }),
        }
    }

    fn passed() -> Verdict {
        Verdict::Passed(PauseEnds::default())
    }

    fn later() -> DateTime<Utc> {
        now() + chrono::Duration::hours(1)
    }

    fn api(code: &str) -> ApiError {
        ApiError {
            http_status: Some(400),
            code: Some(code.to_owned()),
            message: Some("m".to_owned()),
            request_id: Some("Q".to_owned()),
        }
    }

    #[test]
    fn finished_with_success_is_succeeded_and_keeps_the_answer() {
        let decision = decide(
            &ticket(3, 0, later()),
            Some(Ok(&polled("FINISHED", Some(true)))),
            &passed(),
            now(),
            &policy(),
            0.5,
            None,
        );
        let Decision::Finish(finish) = decision else { panic!("expected a finish, got {decision:?}") };
        assert_eq!(finish.state, TicketState::Succeeded);
        assert_eq!(finish.answer.unwrap().result.columns().deployment_id, Some("dep-1"));
        assert!(finish.polled);
    }

    #[test]
    fn finished_without_success_or_failed_status_is_failed() {
        let mut rejected = polled("FINISHED", Some(false));
        let KindResult::Deploy(result) = &mut rejected.answer.result else { unreachable!("a deploy answer") };
        result.validation_errors.push(ValidationIssue {
            line: json!(3),
            column: json!(10),
            end_line: json!(3),
            end_column: json!(14),
            message: Some("Object 'orders' not found".to_owned()),
        });
        for outcome in [rejected, polled("FAILED", None), polled("FINISHED", None)] {
            let decision = decide(&ticket(0, 0, later()), Some(Ok(&outcome)), &passed(), now(), &policy(), 0.5, None);
            assert!(
                matches!(&decision, Decision::Finish(Finish { state: TicketState::Failed, .. })),
                "{outcome:?} gave {decision:?}"
            );
        }
    }

    #[test]
    fn still_running_or_unknown_status_reschedules_on_the_running_cadence() {
        for status in ["INIT", "EXECUTING", "SOMETHING_NEW", ""] {
            let decision =
                decide(&ticket(2, 4, later()), Some(Ok(&polled(status, None))), &passed(), now(), &policy(), 1.0, None);
            let Decision::Reschedule(reschedule) = decision else { panic!("{status}: {decision:?}") };
            // Ceiling for streak 2 is 2s * 2^2 = 8s; jitter 1.0 takes all of it.
            assert_eq!(reschedule.next_poll_at, now() + chrono::Duration::seconds(8), "{status}");
            assert_eq!(reschedule.running_streak, 3);
            assert_eq!(reschedule.error_streak, 0, "an answer ends the error streak");
            assert!(reschedule.answer.is_some() && reschedule.error.is_none());
        }
    }

    #[test]
    fn jitter_moves_the_next_poll_within_floor_and_ceiling() {
        let at = |jitter| match decide(
            &ticket(10, 0, later()),
            Some(Ok(&polled("EXECUTING", None))),
            &passed(),
            now(),
            &policy(),
            jitter,
            None,
        ) {
            Decision::Reschedule(reschedule) => reschedule.next_poll_at - now(),
            other => panic!("{other:?}"),
        };
        assert_eq!(at(0.0), chrono::Duration::seconds(1), "floor is half the initial interval");
        assert_eq!(at(0.5), chrono::Duration::seconds(15));
        assert_eq!(at(0.999_999), chrono::Duration::microseconds(29_999_970));
    }

    #[test]
    fn restart_arithmetic_continues_from_the_persisted_streak() {
        // A daemon that restarts reads running_streak = 5 from the row and continues from there.
        let decision = decide(
            &ticket(5, 0, later()),
            Some(Ok(&polled("EXECUTING", None))),
            &passed(),
            now(),
            &policy(),
            1.0,
            None,
        );
        let Decision::Reschedule(reschedule) = decision else { panic!("{decision:?}") };
        assert_eq!(reschedule.next_poll_at - now(), chrono::Duration::seconds(30), "capped at max_interval");
        assert_eq!(reschedule.running_streak, 6);
    }

    #[test]
    fn transient_errors_back_off_on_their_own_streak_and_keep_the_running_one() {
        let errors = [
            FlinkError::Network("connection reset".to_owned()),
            FlinkError::Transient(api("ServiceUnavailable")),
            FlinkError::Decode(ApiError::default()),
            FlinkError::RateLimited { error: api("Throttling.User"), retry_after: None },
        ];
        for error in errors {
            let decision = decide(&ticket(4, 1, later()), Some(Err(&error)), &passed(), now(), &policy(), 1.0, None);
            let Decision::Reschedule(reschedule) = decision else { panic!("{error:?}: {decision:?}") };
            assert_eq!(reschedule.next_poll_at - now(), chrono::Duration::seconds(4), "{error:?}: 2s * 2^1");
            assert_eq!((reschedule.running_streak, reschedule.error_streak), (4, 2));
            assert_eq!(reschedule.error.as_ref().map(|(code, _)| code.clone()), Some(error.code()));
        }
    }

    #[test]
    fn server_retry_after_hint_wins_over_the_schedule() {
        let error =
            FlinkError::RateLimited { error: api("Throttling"), retry_after: Some(Duration::from_millis(1500)) };
        let Decision::Reschedule(reschedule) =
            decide(&ticket(0, 6, later()), Some(Err(&error)), &passed(), now(), &policy(), 1.0, None)
        else {
            panic!("expected a reschedule")
        };
        assert_eq!(reschedule.next_poll_at - now(), chrono::Duration::milliseconds(1500));
    }

    #[test]
    fn a_poll_never_goes_past_the_deadline_and_the_deadline_expires_it() {
        let deadline = now() + chrono::Duration::seconds(3);
        let Decision::Reschedule(reschedule) = decide(
            &ticket(10, 0, deadline),
            Some(Ok(&polled("EXECUTING", None))),
            &passed(),
            now(),
            &policy(),
            1.0,
            None,
        ) else {
            panic!("expected a reschedule")
        };
        assert_eq!(reschedule.next_poll_at, deadline);

        let at_deadline = decide(
            &ticket(10, 0, deadline),
            Some(Ok(&polled("EXECUTING", None))),
            &passed(),
            deadline,
            &policy(),
            0.5,
            None,
        );
        assert!(matches!(at_deadline, Decision::Finish(Finish { state: TicketState::Expired, .. })));
        let error = FlinkError::Network("down".to_owned());
        let failed_at_deadline =
            decide(&ticket(10, 3, deadline), Some(Err(&error)), &passed(), deadline, &policy(), 0.5, None);
        let Decision::Finish(finish) = failed_at_deadline else { panic!("expected expiry") };
        assert_eq!(finish.state, TicketState::Expired);
        assert_eq!(finish.error.unwrap().0, "NetworkError");
        // A final answer at the deadline still counts.
        let finished = decide(
            &ticket(10, 0, deadline),
            Some(Ok(&polled("FINISHED", Some(true)))),
            &passed(),
            deadline,
            &policy(),
            0.5,
            None,
        );
        assert!(matches!(finished, Decision::Finish(Finish { state: TicketState::Succeeded, .. })));
    }

    #[test]
    fn errors_about_us_pause_instead_of_failing_the_ticket() {
        for (error, scope) in [
            (FlinkError::Config(api("SignatureDoesNotMatch")), PauseScope::Global),
            (FlinkError::Credentials(api("InvalidAccessKeyId.NotFound")), PauseScope::Global),
            (FlinkError::Config(api("InvalidTimeStamp.Expired")), PauseScope::Global),
            (FlinkError::AccessDenied(api("NoPermission")), PauseScope::Workspace),
        ] {
            let decision = decide(&ticket(1, 1, later()), Some(Err(&error)), &passed(), now(), &policy(), 0.5, None);
            let Decision::Pause { scope: paused, reschedule } = decision else { panic!("expected a pause") };
            assert_eq!(paused, scope);
            assert_eq!(
                (reschedule.error, reschedule.request_id),
                (Some((error.code(), error.message())), Some("Q".to_owned()))
            );
            assert_eq!((reschedule.running_streak, reschedule.error_streak), (1, 1), "the streaks are kept");
        }
    }

    #[test]
    fn a_pause_waits_for_the_end_of_its_own_scope_and_never_past_the_deadline() {
        let global_end = now() + chrono::Duration::seconds(8);
        let workspace_end = now() + chrono::Duration::seconds(16);
        let pauses = Verdict::Passed(PauseEnds { global: Some(global_end), workspace: Some(workspace_end) });
        for (error, end) in [
            (FlinkError::Config(api("SignatureDoesNotMatch")), global_end),
            (FlinkError::AccessDenied(api("NoPermission")), workspace_end),
        ] {
            let decision = decide(&ticket(1, 1, later()), Some(Err(&error)), &pauses, now(), &policy(), 0.5, None);
            let Decision::Pause { reschedule, .. } = decision else { panic!("expected a pause") };
            assert_eq!(reschedule.next_poll_at, end);
            let soon = now() + chrono::Duration::seconds(3);
            let decision = decide(&ticket(1, 1, soon), Some(Err(&error)), &pauses, now(), &policy(), 0.5, None);
            let Decision::Pause { reschedule, .. } = decision else { panic!("expected a pause") };
            assert_eq!(reschedule.next_poll_at, soon, "the deadline comes first");
        }
        let unknown_end = decide(
            &ticket(1, 1, later()),
            Some(Err(&FlinkError::Config(api("SignatureDoesNotMatch")))),
            &passed(),
            now(),
            &policy(),
            0.5,
            None,
        );
        let Decision::Pause { reschedule, .. } = unknown_end else { panic!("expected a pause") };
        assert_eq!(reschedule.next_poll_at, now() + chrono::Duration::seconds(2), "the shortest pause");
    }

    #[test]
    fn a_held_ticket_waits_for_the_pause_unpolled_and_expires_at_its_deadline() {
        let reason = ("SignatureDoesNotMatch".to_owned(), "m".to_owned());
        let until = now() + chrono::Duration::seconds(30);
        let held = Verdict::Held(Hold { until, reason: reason.clone() });
        let decision = decide(&ticket(2, 3, later()), None, &held, now(), &policy(), 0.5, None);
        assert_eq!(
            decision,
            Decision::Hold(Reschedule {
                next_poll_at: until,
                running_streak: 2,
                error_streak: 3,
                polled: false,
                request_id: None,
                answer: None,
                error: Some(reason.clone()),
                running_seen_ms: None,
                note: "held without a request while polling is paused (SignatureDoesNotMatch)".to_owned(),
            })
        );
        let soon = now() + chrono::Duration::seconds(5);
        let Decision::Hold(reschedule) = decide(&ticket(2, 3, soon), None, &held, now(), &policy(), 0.5, None) else {
            panic!("expected a hold")
        };
        assert_eq!(reschedule.next_poll_at, soon, "never past the deadline");
        let expired = decide(&ticket(2, 3, now()), None, &held, now(), &policy(), 0.5, None);
        assert_eq!(
            expired,
            Decision::Finish(Finish {
                state: TicketState::Expired,
                polled: false,
                request_id: None,
                answer: None,
                error: Some(reason),
            })
        );
    }

    #[test]
    fn ticket_errors_fail_it_and_no_run_of_transient_errors_ever_does() {
        let not_found = FlinkError::Ticket(api("TicketNotFound"));
        let Decision::Finish(finish) =
            decide(&ticket(0, 0, later()), Some(Err(&not_found)), &passed(), now(), &policy(), 0.5, None)
        else {
            panic!("expected a finish")
        };
        assert_eq!((finish.state, finish.error.unwrap().0), (TicketState::Failed, "TicketNotFound".to_owned()));

        let html = ApiError { http_status: Some(502), message: Some("<html>".to_owned()), ..ApiError::default() };
        for error in [
            FlinkError::Decode(ApiError { http_status: Some(200), ..ApiError::default() }),
            FlinkError::Transient(html),
            FlinkError::Network("connection reset".to_owned()),
        ] {
            for streak in [9, 10, 13, 1_000] {
                let decision =
                    decide(&ticket(0, streak, later()), Some(Err(&error)), &passed(), now(), &policy(), 0.5, None);
                assert!(matches!(decision, Decision::Reschedule(_)), "{error:?} after {streak}: {decision:?}");
            }
        }
    }

    #[test]
    fn an_error_that_pauses_expires_a_ticket_past_its_deadline() {
        for error in [FlinkError::Config(api("SignatureDoesNotMatch")), FlinkError::AccessDenied(api("NoPermission"))] {
            let decision = decide(&ticket(1, 1, now()), Some(Err(&error)), &passed(), now(), &policy(), 0.5, None);
            assert!(matches!(decision, Decision::Finish(Finish { state: TicketState::Expired, .. })), "{decision:?}");
        }
    }

    fn learned(low: f64, high: f64) -> LearnedSchedule {
        let samples: Vec<crate::domain::RunSample> = (0..30)
            .map(|index| {
                let run = low * (high / low).powf(f64::from(index) / 29.0);
                crate::domain::RunSample {
                    running_seen: Duration::from_secs_f64(run * 0.95),
                    finish_seen: Duration::from_secs_f64(run * 1.05),
                }
            })
            .collect();
        let bounds = crate::poller::Bounds {
            target_lag: 0.1,
            min_interval: Duration::from_secs(1),
            max_interval: Duration::from_secs(30),
        };
        LearnedSchedule::learn(&samples, &bounds).expect("enough samples")
    }

    /// A ticket created `age` before now that has answered "running" `streak` times.
    fn running_for(age: chrono::Duration, streak: i64, deadline: DateTime<Utc>) -> Ticket {
        Ticket { created_at: now() - age, ..ticket(streak, 0, deadline) }
    }

    #[test]
    fn a_running_ticket_is_polled_at_the_learned_instant_and_the_note_says_why() {
        let schedule = learned(10.0, 14.0);
        let planned = schedule.planned();
        let ticket = running_for(chrono::Duration::zero(), 0, later());
        let executing = polled("EXECUTING", None);
        let Decision::Reschedule(reschedule) =
            decide(&ticket, Some(Ok(&executing)), &passed(), now(), &policy(), 0.0, Some(&schedule))
        else {
            panic!("expected a reschedule")
        };
        let whole_ms = chrono::Duration::milliseconds(1);
        assert_eq!(reschedule.next_poll_at, (now() + to_chrono(planned[1])).duration_round_up(whole_ms).unwrap());
        assert_eq!(reschedule.running_seen_ms, Some(0));
        assert!(reschedule.note.starts_with("learned schedule: poll 2 of "), "{}", reschedule.note);
        assert!(reschedule.note.contains("30 finished tickets"), "{}", reschedule.note);
        // Jitter only ever takes the poll later, by at most LEARNED_JITTER of the wait.
        let Decision::Reschedule(jittered) =
            decide(&ticket, Some(Ok(&executing)), &passed(), now(), &policy(), 1.0, Some(&schedule))
        else {
            panic!("expected a reschedule")
        };
        let wait = (jittered.next_poll_at - now()).to_std().unwrap();
        assert!(wait > planned[1] && wait <= planned[1].mul_f64(1.0 + LEARNED_JITTER) + Duration::from_millis(1));
        // The poll lands past its planned instant, so the next one is the next planned.
        let at_poll = running_for(to_chrono(wait), 1, later());
        let Decision::Reschedule(next) =
            decide(&at_poll, Some(Ok(&executing)), &passed(), now(), &policy(), 0.0, Some(&schedule))
        else {
            panic!("expected a reschedule")
        };
        assert!(next.note.starts_with("learned schedule: poll 3 of "), "{}", next.note);
    }

    #[test]
    fn max_interval_and_the_deadline_win_over_the_learned_schedule() {
        let slow = learned(200.0, 300.0);
        let ticket = running_for(chrono::Duration::zero(), 0, later());
        let executing = polled("EXECUTING", None);
        let Decision::Reschedule(capped) =
            decide(&ticket, Some(Ok(&executing)), &passed(), now(), &policy(), 0.0, Some(&slow))
        else {
            panic!("expected a reschedule")
        };
        assert_eq!(capped.next_poll_at - now(), chrono::Duration::seconds(30), "poll.max_interval");
        let deadline = now() + chrono::Duration::seconds(5);
        let ticket = running_for(chrono::Duration::zero(), 0, deadline);
        let Decision::Reschedule(due) =
            decide(&ticket, Some(Ok(&executing)), &passed(), now(), &policy(), 0.0, Some(&learned(10.0, 14.0)))
        else {
            panic!("expected a reschedule")
        };
        assert_eq!(due.next_poll_at, deadline);
        assert!(due.note.ends_with("; the deadline comes first"), "{}", due.note);
    }

    #[test]
    fn without_a_schedule_past_its_range_or_with_adaptive_off_the_backoff_applies() {
        let schedule = learned(10.0, 14.0);
        let executing = polled("EXECUTING", None);
        let backoff = |ticket: &Ticket, policy: &Policy, schedule: Option<&LearnedSchedule>| {
            let Decision::Reschedule(reschedule) =
                decide(ticket, Some(Ok(&executing)), &passed(), now(), policy, 1.0, schedule)
            else {
                panic!("expected a reschedule")
            };
            (reschedule.next_poll_at - now(), reschedule.note)
        };
        let fresh = running_for(chrono::Duration::zero(), 0, later());
        let (wait, note) = backoff(&fresh, &policy(), None);
        assert_eq!(wait, chrono::Duration::seconds(2), "the first ceiling, full jitter at 1.0");
        assert!(note.contains("fewer than 5 finished tickets"), "{note}");

        let off = Policy { adaptive: false, ..policy() };
        let (wait, note) = backoff(&fresh, &off, Some(&schedule));
        assert_eq!(wait, chrono::Duration::seconds(2));
        assert!(note.contains("poll.adaptive is off"), "{note}");

        let old = running_for(to_chrono(schedule.range_end()) + chrono::Duration::seconds(1), 3, later());
        let (wait, note) = backoff(&old, &policy(), Some(&schedule));
        assert_eq!(wait, chrono::Duration::seconds(16), "2s * 2^3");
        assert!(note.contains("longer than the learned schedule covers"), "{note}");
    }

    #[test]
    fn errors_and_pauses_keep_their_own_schedules_and_say_so() {
        let schedule = learned(10.0, 14.0);
        let hint = FlinkError::RateLimited { error: api("Throttling"), retry_after: Some(Duration::from_millis(1500)) };
        let Decision::Reschedule(retry) =
            decide(&ticket(0, 0, later()), Some(Err(&hint)), &passed(), now(), &policy(), 1.0, Some(&schedule))
        else {
            panic!("expected a reschedule")
        };
        assert_eq!(retry.next_poll_at - now(), chrono::Duration::milliseconds(1500));
        assert_eq!(retry.note, "retry after Throttling: the server asked to wait 1.5s");
        assert_eq!(retry.running_seen_ms, None, "an error says nothing about the run");
        let denied = FlinkError::AccessDenied(api("NoPermission"));
        let Decision::Pause { reschedule, .. } =
            decide(&ticket(0, 0, later()), Some(Err(&denied)), &passed(), now(), &policy(), 1.0, Some(&schedule))
        else {
            panic!("expected a pause")
        };
        assert_eq!(reschedule.note, "this workspace paused after NoPermission");
    }
}
