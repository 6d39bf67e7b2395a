//! The schedule table: every known job and its next fire instant, as a pure data structure.
//!
//! Jobs arrive as etcd mirror events; the daemon's loop sleeps until [`Scheduler::next_deadline`]
//! and then takes [`Scheduler::due`]. A tick is due `lead` before its instant (never before the
//! job's previous tick): its hand-over is done by then, and the executor starts it at the tick. A priority queue with lazy deletion keeps both cheap: a
//! changed or removed job leaves its old queue entry behind, recognised as stale by generation.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone as _, Utc};
use chrono_tz::Tz;
use gocron_shared::job::{JobSpec, Origin, Trigger};
use gocron_shared::keys::EtcdKeys;
use gocron_shared::registry::{MirrorEvent, Resync};
use gocron_shared::rule::Schedule;

struct Entry {
    spec: Arc<JobSpec>,
    schedule: Arc<Schedule>,
    generation: u64,
}

/// A tick to fire.
#[derive(Debug, Clone)]
pub struct Tick {
    /// The job.
    pub job: Arc<JobSpec>,
    /// The job's schedule (for the ticks it missed).
    pub schedule: Arc<Schedule>,
    /// The scheduled instant.
    pub at: DateTime<Utc>,
    /// The job's following tick, if any: a run with `timeout_secs = 0` may last until then.
    pub following: Option<DateTime<Utc>>,
    /// A tick of the rule, an operator's run-now request made at `at`, or a retry or an
    /// event's run due at `at`.
    pub trigger: Trigger,
    /// For a retry or an event's run, where it comes from.
    pub origin: Option<Origin>,
}

/// Every job this dispatcher schedules.
pub struct Scheduler {
    jobs: HashMap<i64, Entry>,
    /// `(hand over at, unix ms; job id; generation; the tick, unix ms)`, earliest first.
    queue: BinaryHeap<Reverse<(i64, i64, u64, i64)>>,
    default_tz: Tz,
    max_late: Duration,
    /// How long before its tick a tick is due.
    lead_ms: i64,
    keys: EtcdKeys,
    generation: u64,
    /// The jobs put since a (re)read of etcd began.
    resync: Resync<i64>,
}

impl Scheduler {
    /// The tick of a run-now request for job `job_id` made at `requested`, the request's `env`
    /// on top of the job's (`None`: the job is not scheduled here, e.g. disabled or invalid).
    pub fn manual(
        &self,
        job_id: i64,
        requested: DateTime<Utc>,
        env: &[(String, String)],
    ) -> Option<Tick> {
        let entry = self.jobs.get(&job_id)?;
        let job = if env.is_empty() {
            entry.spec.clone()
        } else {
            let mut job = JobSpec::clone(&entry.spec);
            job.env.retain(|(k, _)| env.iter().all(|(key, _)| key != k));
            job.env.extend(env.iter().cloned());
            Arc::new(job)
        };
        Some(Tick {
            job,
            schedule: entry.schedule.clone(),
            at: requested,
            following: entry.schedule.next_after(requested),
            trigger: Trigger::Manual,
            origin: None,
        })
    }

    /// The tick of a retry or an event's run (`trigger`) of job `job_id`, due at `due`
    /// (`None`: the job is not scheduled here: disabled, invalid, deleted, or not yet known).
    pub fn deferred(
        &self,
        job_id: i64,
        due: DateTime<Utc>,
        trigger: Trigger,
        origin: Origin,
    ) -> Option<Tick> {
        let entry = self.jobs.get(&job_id)?;
        Some(Tick {
            job: entry.spec.clone(),
            schedule: entry.schedule.clone(),
            at: due,
            following: entry.schedule.next_after(due),
            trigger,
            origin: Some(origin),
        })
    }

    /// An empty table; jobs with no time zone use `default_tz`; a tick found more than
    /// `max_late` past is not fired.
    pub fn new(keys: EtcdKeys, default_tz: Tz, max_late: Duration) -> Scheduler {
        Scheduler {
            jobs: HashMap::new(),
            queue: BinaryHeap::new(),
            default_tz,
            max_late,
            lead_ms: 0,
            keys,
            generation: 0,
            resync: Resync::default(),
        }
    }

    /// The table with each tick due `lead` before its instant, though never before the job's
    /// previous tick (or before the job came): see `[dispatcher] lead_ms`.
    pub fn with_lead(mut self, lead: Duration) -> Scheduler {
        self.lead_ms = lead.as_millis() as i64;
        self
    }

    /// Queues job `id`'s tick at `tick_ms`, due `lead` before it but not before `not_before_ms`.
    fn enqueue(&mut self, tick_ms: i64, id: i64, generation: u64, not_before_ms: i64) {
        let due = (tick_ms - self.lead_ms).max(not_before_ms.min(tick_ms));
        self.queue.push(Reverse((due, id, generation, tick_ms)));
    }

    /// How many jobs are scheduled.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Whether no job is scheduled.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Applies one change of the published jobs. `true` when it completed a (re)read of them
    /// (`Synced`): the moment to look for ticks missed meanwhile.
    pub fn apply(&mut self, event: MirrorEvent, now: DateTime<Utc>) -> bool {
        match event {
            MirrorEvent::Resync => self.resync.begin(),
            MirrorEvent::Put(key, value) => {
                if let Some(id) = self.upsert_published(&key, &value, now) {
                    self.resync.put(id);
                }
            }
            MirrorEvent::Delete(key) => {
                if let Some(id) = self.keys.job_id(&key) {
                    self.remove(id);
                }
            }
            MirrorEvent::Synced => {
                let Some(seen) = self.resync.end() else {
                    return false;
                };
                let gone: Vec<i64> = self
                    .jobs
                    .keys()
                    .filter(|id| !seen.contains(id))
                    .copied()
                    .collect();
                for id in gone {
                    self.remove(id);
                }
                tracing::info!(jobs = self.jobs.len(), "published jobs read");
                return true;
            }
        }
        false
    }

    fn upsert_published(&mut self, key: &str, value: &[u8], now: DateTime<Utc>) -> Option<i64> {
        let Some(id) = self.keys.job_id(key) else {
            tracing::warn!(%key, "ignoring a key under the jobs prefix that is not a job id");
            return None;
        };
        match serde_json::from_slice::<JobSpec>(value) {
            Ok(spec) if spec.id == id => {
                self.upsert(spec, now);
                Some(id)
            }
            Ok(spec) => {
                tracing::warn!(%key, spec_id = spec.id, "ignoring a published job whose id differs from its key");
                None
            }
            Err(e) => {
                // Better not to run a job than to run a version of it that may be withdrawn.
                tracing::warn!(%key, error = %e, "a published job is not valid JSON; unscheduling it");
                self.remove(id);
                None
            }
        }
    }

    /// Adds or changes a job; an unchanged job keeps its place.
    pub fn upsert(&mut self, spec: JobSpec, now: DateTime<Utc>) {
        if let Some(entry) = self.jobs.get(&spec.id)
            && *entry.spec == spec
        {
            return;
        }
        let schedule = match spec.schedule(self.default_tz) {
            Ok(s) => s,
            Err(e) => {
                // The monitor validated it; only a different conf.ini here can get us here.
                tracing::error!(job_id = spec.id, job = %spec.name, error = %e, "cannot schedule job");
                self.remove(spec.id);
                return;
            }
        };
        self.generation += 1;
        let id = spec.id;
        // A one-shot (`@at`) whose instant passed before it got here still fires, at once: as
        // a late tick, which the misfire policy handles (it is marked done either way).
        let next = if schedule.is_one_shot() {
            schedule.next_after(DateTime::<Utc>::MIN_UTC)
        } else {
            schedule.next_after(now)
        };
        // A (re)read of a million jobs is one summary line, not a million.
        if self.resync.in_progress() {
            tracing::debug!(job_id = id, job = %spec.name, schedule = %schedule, next = ?next, "job scheduled");
        } else {
            tracing::info!(job_id = id, job = %spec.name, schedule = %schedule, next = ?next, "job scheduled");
        }
        if let Some(next) = next {
            self.enqueue(
                next.timestamp_millis(),
                id,
                self.generation,
                now.timestamp_millis(),
            );
        }
        self.jobs.insert(
            id,
            Entry {
                spec: Arc::new(spec),
                schedule: Arc::new(schedule),
                generation: self.generation,
            },
        );
    }

    /// Forgets a job.
    pub fn remove(&mut self, id: i64) {
        if let Some(entry) = self.jobs.remove(&id)
            && !self.resync.in_progress()
        {
            tracing::info!(job_id = id, job = %entry.spec.name, "job unscheduled");
        }
    }

    /// The earliest instant (unix ms) a tick is due, if any job is scheduled.
    pub fn next_deadline(&mut self) -> Option<i64> {
        while let Some(Reverse((due, id, generation, _))) = self.queue.peek().copied() {
            if self.is_current(id, generation) {
                return Some(due);
            }
            self.queue.pop();
        }
        None
    }

    fn is_current(&self, id: i64, generation: u64) -> bool {
        self.jobs
            .get(&id)
            .is_some_and(|e| e.generation == generation)
    }

    /// Takes every tick due at `now` (at its instant, or up to `lead` before it) and schedules
    /// each job's following tick. A job found more than `max_late` behind (the process was
    /// stalled) fires once, at its latest tick not after `now`, rather than in a burst: the
    /// ticks it skipped are missed ones, which whoever fires that tick handles by the job's
    /// misfire policy.
    pub fn due(&mut self, now: DateTime<Utc>) -> Vec<Tick> {
        let now_ms = now.timestamp_millis();
        let max_late_ms = self.max_late.as_millis() as i64;
        let mut ticks = Vec::new();
        while let Some(Reverse((due, id, generation, at))) = self.queue.peek().copied() {
            if due > now_ms {
                break;
            }
            self.queue.pop();
            if !self.is_current(id, generation) {
                continue;
            }
            let entry = &self.jobs[&id];
            let Some(mut tick) = Utc.timestamp_millis_opt(at).single() else {
                continue;
            };
            if now_ms - at > max_late_ms {
                let latest = latest_until(&entry.schedule, tick, now);
                tracing::warn!(
                    job_id = id,
                    job = %entry.spec.name,
                    tick = %tick,
                    late_ms = now_ms - at,
                    "this dispatcher is late; firing the job's latest tick, the misfire policy decides about the others"
                );
                tick = latest;
            }
            let following = entry.schedule.next_after(tick);
            ticks.push(Tick {
                job: entry.spec.clone(),
                schedule: entry.schedule.clone(),
                at: tick,
                following,
                trigger: Trigger::Schedule,
                origin: None,
            });
            if let Some(next) = following {
                let this_ms = tick.timestamp_millis();
                self.enqueue(next.timestamp_millis(), id, generation, this_ms);
            }
        }
        ticks
    }

    /// Every scheduled job with its schedule.
    pub fn jobs(&self) -> impl Iterator<Item = (&Arc<JobSpec>, &Arc<Schedule>)> {
        self.jobs.values().map(|e| (&e.spec, &e.schedule))
    }

    /// The tick to fire at `now` for a job whose latest fired tick was `through`, if it missed
    /// any (its next tick after `through` is more than `max_late` before `now`): its latest tick not
    /// after `now`, which the misfire policy handles together with the ones before it.
    pub fn catch_up(
        max_late: Duration,
        spec: &Arc<JobSpec>,
        schedule: &Arc<Schedule>,
        through: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Option<Tick> {
        let first = schedule.next_after(through)?;
        if (now - first).to_std().unwrap_or_default() <= max_late {
            return None;
        }
        let at = latest_until(schedule, first, now);
        Some(Tick {
            job: spec.clone(),
            schedule: schedule.clone(),
            at,
            following: schedule.next_after(at),
            trigger: Trigger::Schedule,
            origin: None,
        })
    }
}

/// The latest tick of `schedule` not after `now`, starting from `tick` (itself not after `now`).
fn latest_until(schedule: &Schedule, mut tick: DateTime<Utc>, now: DateTime<Utc>) -> DateTime<Utc> {
    // A sub-second rule would step through the whole gap: look in the last second first.
    if let Some(near) = schedule.next_after(now - chrono::Duration::seconds(1))
        && near > tick
        && near <= now
    {
        tick = near;
    }
    while let Some(next) = schedule.next_after(tick) {
        if next > now {
            break;
        }
        tick = next;
    }
    tick
}

#[cfg(test)]
mod tests {
    use super::*;
    use gocron_shared::job::{JobKind, TimeoutPolicy};

    fn spec(id: i64, rule: &str) -> JobSpec {
        JobSpec {
            id,
            name: format!("job{id}"),
            rule: rule.into(),
            command: "true".into(),
            kind: JobKind::Shell,
            machine: String::new(),
            timeout_secs: 0,
            timeout_policy: TimeoutPolicy::Abandon,
            time_zone: String::new(),
            misfire: Default::default(),
            env: Vec::new(),
            workdir: String::new(),
            route: Default::default(),
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn scheduler() -> Scheduler {
        Scheduler::new(EtcdKeys::new("/g"), Tz::UTC, Duration::from_secs(5))
    }

    fn fired(ticks: &[Tick]) -> Vec<(i64, String)> {
        ticks
            .iter()
            .map(|t| (t.job.id, t.at.format("%H:%M:%S").to_string()))
            .collect()
    }

    #[test]
    fn fires_each_tick_once_in_order() {
        let mut s = scheduler();
        s.upsert(spec(1, "*/2 * * * * *"), at("2026-01-01T00:00:00.5Z"));
        s.upsert(spec(2, "* * * * * *"), at("2026-01-01T00:00:00.5Z"));
        assert_eq!(
            s.next_deadline(),
            Some(at("2026-01-01T00:00:01Z").timestamp_millis())
        );
        assert!(s.due(at("2026-01-01T00:00:00.9Z")).is_empty());
        assert_eq!(
            fired(&s.due(at("2026-01-01T00:00:01.001Z"))),
            [(2, "00:00:01".into())]
        );
        let mut two = fired(&s.due(at("2026-01-01T00:00:02.001Z")));
        two.sort();
        assert_eq!(two, [(1, "00:00:02".into()), (2, "00:00:02".into())]);
        assert!(s.due(at("2026-01-01T00:00:02.5Z")).is_empty());
    }

    #[test]
    fn a_tick_is_due_its_lead_before_it_but_never_before_the_previous_tick() {
        let mut s = scheduler().with_lead(Duration::from_millis(300));
        s.upsert(spec(1, "* * * * * *"), at("2026-01-01T00:00:00.5Z"));
        s.upsert(spec(2, "*/10 * * * * *"), at("2026-01-01T00:00:00.5Z"));
        // Job 1's tick at 00:01 is due at 00:00.7, job 2's at 00:10 at 00:09.7.
        assert_eq!(
            s.next_deadline(),
            Some(at("2026-01-01T00:00:00.7Z").timestamp_millis())
        );
        assert!(s.due(at("2026-01-01T00:00:00.699Z")).is_empty());
        let early = s.due(at("2026-01-01T00:00:00.7Z"));
        // The tick itself, not the instant it was taken at, is what the run is for.
        assert_eq!(fired(&early), [(1, "00:00:01".into())]);
        assert_eq!(early[0].at, at("2026-01-01T00:00:01Z"));
        assert_eq!(early[0].following, Some(at("2026-01-01T00:00:02Z")));
        assert_eq!(
            s.next_deadline(),
            Some(at("2026-01-01T00:00:01.7Z").timestamp_millis())
        );
        let mut at_9_7: Vec<(i64, String)> = fired(&s.due(at("2026-01-01T00:00:09.7Z")));
        at_9_7.sort();
        // Job 1, late by then, fires its latest tick (00:09; the misfire policy has the
        // others), then its 00:10 as any tick, 300 ms before it; so does job 2.
        assert_eq!(
            at_9_7,
            [
                (1, "00:00:09".into()),
                (1, "00:00:10".into()),
                (2, "00:00:10".into())
            ]
        );

        // A lead longer than the job's period: each tick is due at the one before it, so the
        // ticks still come one at a time, in order, and the first not before the job came.
        let mut s = scheduler().with_lead(Duration::from_millis(1500));
        s.upsert(spec(1, "* * * * * *"), at("2026-01-01T00:00:00.5Z"));
        assert_eq!(
            s.next_deadline(),
            Some(at("2026-01-01T00:00:00.5Z").timestamp_millis())
        );
        assert_eq!(
            fired(&s.due(at("2026-01-01T00:00:00.5Z"))),
            [(1, "00:00:01".into())]
        );
        assert_eq!(
            s.next_deadline(),
            Some(at("2026-01-01T00:00:01Z").timestamp_millis())
        );
        assert!(s.due(at("2026-01-01T00:00:00.999Z")).is_empty());
        assert_eq!(
            fired(&s.due(at("2026-01-01T00:00:01Z"))),
            [(1, "00:00:02".into())]
        );
    }

    #[test]
    fn change_reschedules_and_same_spec_is_a_no_op() {
        let mut s = scheduler();
        s.upsert(spec(1, "*/10 * * * * *"), at("2026-01-01T00:00:00Z"));
        s.upsert(spec(1, "*/10 * * * * *"), at("2026-01-01T00:00:09Z"));
        assert_eq!(
            s.next_deadline(),
            Some(at("2026-01-01T00:00:10Z").timestamp_millis())
        );
        s.upsert(spec(1, "*/3 * * * * *"), at("2026-01-01T00:00:01Z"));
        assert_eq!(
            s.next_deadline(),
            Some(at("2026-01-01T00:00:03Z").timestamp_millis())
        );
        let ticks = s.due(at("2026-01-01T00:00:03.001Z"));
        assert_eq!(fired(&ticks), [(1, "00:00:03".into())]);
        // Woken late but within max_late: the due */3 ticks fire; the stale */10 entry never does.
        let ticks = s.due(at("2026-01-01T00:00:10.001Z"));
        assert_eq!(
            fired(&ticks),
            [(1, "00:00:06".into()), (1, "00:00:09".into())]
        );
    }

    #[test]
    fn removed_jobs_do_not_fire() {
        let mut s = scheduler();
        s.upsert(spec(1, "* * * * * *"), at("2026-01-01T00:00:00Z"));
        s.remove(1);
        assert!(s.due(at("2026-01-01T00:00:05Z")).is_empty());
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn a_stall_skips_old_ticks_instead_of_bursting() {
        let mut s = scheduler();
        s.upsert(spec(1, "* * * * * *"), at("2026-01-01T00:00:00Z"));
        // Woken 60 s late: only the latest tick fires (the misfire policy handles the ones it
        // skipped), and the next tick is in the future.
        let ticks = s.due(at("2026-01-01T00:01:00.5Z"));
        assert_eq!(fired(&ticks), vec![(1, "00:01:00".to_owned())]);
        assert_eq!(
            s.next_deadline(),
            Some(at("2026-01-01T00:01:01Z").timestamp_millis())
        );
    }

    #[test]
    fn mirror_events_add_change_and_remove() {
        let mut s = scheduler();
        let now = at("2026-01-01T00:00:00Z");
        let json = |id, rule| serde_json::to_vec(&spec(id, rule)).unwrap();
        let read = |s: &mut Scheduler, kvs: Vec<(String, Vec<u8>)>| {
            assert!(!s.apply(MirrorEvent::Resync, now));
            for (k, v) in kvs {
                assert!(!s.apply(MirrorEvent::Put(k, v), now));
            }
            assert!(s.apply(MirrorEvent::Synced, now));
        };
        read(
            &mut s,
            vec![
                ("/g/jobs/1".into(), json(1, "* * * * * *")),
                ("/g/jobs/2".into(), json(2, "* * * * * *")),
                ("/g/jobs/bad".into(), b"{}".to_vec()),
            ],
        );
        assert_eq!(s.len(), 2);
        s.apply(MirrorEvent::Delete("/g/jobs/1".into()), now);
        assert_eq!(s.len(), 1);
        s.apply(
            MirrorEvent::Put("/g/jobs/3".into(), json(3, "* * * * * *")),
            now,
        );
        s.apply(
            MirrorEvent::Put("/g/jobs/4".into(), json(5, "* * * * * *")),
            now,
        );
        assert_eq!(s.len(), 2);
        // A re-read keeps every job until it is complete, then forgets those it did not bring.
        s.apply(MirrorEvent::Resync, now);
        s.apply(
            MirrorEvent::Put("/g/jobs/3".into(), json(3, "* * * * * *")),
            now,
        );
        assert_eq!(s.len(), 2);
        assert!(s.apply(MirrorEvent::Synced, now));
        assert_eq!(s.len(), 1);
        assert_eq!(
            fired(&s.due(at("2026-01-01T00:00:01Z"))),
            [(3, "00:00:01".into())]
        );
    }
}
