//! Where a run's start and end go: wall time per step, in microseconds, in the order the
//! steps ran. One monotonic clock serves the supervisor, the runner and the sandbox's own
//! side (the child stamps the same clock across its namespaces), so the steps are
//! contiguous: each starts where the one before it ended, and together they cover the run
//! from the request to the report.

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A step of a run, as the run report and `covenant-ctl run --timings` name it, declared
/// in the order the steps run (an OCI runtime's run takes [`TimedStep::Runtime`] in place
/// of the native runner's steps from the cgroup to the exec).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimedStep {
    /// Waiting for the audit store (embedded runs). It opens on a thread of its own
    /// beside the preparation, so this is only what is left of the open once the
    /// bundle is written.
    Store,
    /// Compiling the request into a plan.
    Compile,
    /// Verifying the capability (or the operator's self-grant) and authorising the
    /// request under it, images resolved.
    Authorise,
    /// A daemon job's admission: the request read, the capability verified, the plan
    /// compiled and authorised, the job's first rows committed.
    Admit,
    /// A daemon job waiting for a slot, then its start committed and its plan handed to
    /// the job's shim.
    Queue,
    /// Opening every host path again, checking it is the object authorised, and staging it.
    HostPaths,
    /// Writing the bundle (and, for the native runner, checking the spec it holds).
    Bundle,
    /// Compiling seccomp, deciding landlock, cloning the host trees to attach.
    Prepare,
    /// Making the run's cgroups and moving the sandbox into them.
    Cgroup,
    /// Cloning the sandbox's init into its namespaces.
    Clone,
    /// Writing the user namespace's id maps.
    IdMaps,
    /// Starting the egress gateway in the sandbox's network namespace.
    Gateway,
    /// Init taking root of its namespaces: credentials, parent-death signal, cgroup
    /// namespace, hostname, loopback.
    Init,
    /// Building the root filesystem: the root, every mount, masked and read-only paths.
    Mounts,
    /// `pivot_root`, detaching the old root, remounting the root read-only.
    Pivot,
    /// A new session, forking the program, rlimits, dropping privileges, no_new_privs,
    /// the working directory.
    Privileges,
    /// Applying the landlock ruleset.
    Landlock,
    /// Finding the program, closing inherited descriptors, loading the seccomp filters.
    Seccomp,
    /// `execve` until the new program runs.
    Exec,
    /// Committing the run's audit events once the program runs.
    Audit,
    /// An OCI runtime's own create and start (what happens inside it is its own).
    Runtime,
    /// The program running, until the sandbox is gone.
    Wait,
    /// Collecting usage, removing cgroups, staging places and the bundle, the git
    /// findings, and committing the run's last audit events.
    Teardown,
}

impl TimedStep {
    pub fn as_str(self) -> &'static str {
        match self {
            TimedStep::Store => "store",
            TimedStep::Authorise => "authorise",
            TimedStep::Admit => "admit",
            TimedStep::Queue => "queue",
            TimedStep::Compile => "compile",
            TimedStep::HostPaths => "host_paths",
            TimedStep::Bundle => "bundle",
            TimedStep::Prepare => "prepare",
            TimedStep::Cgroup => "cgroup",
            TimedStep::Clone => "clone",
            TimedStep::IdMaps => "id_maps",
            TimedStep::Gateway => "gateway",
            TimedStep::Init => "init",
            TimedStep::Mounts => "mounts",
            TimedStep::Pivot => "pivot",
            TimedStep::Privileges => "privileges",
            TimedStep::Landlock => "landlock",
            TimedStep::Seccomp => "seccomp",
            TimedStep::Exec => "exec",
            TimedStep::Audit => "audit",
            TimedStep::Runtime => "runtime",
            TimedStep::Wait => "wait",
            TimedStep::Teardown => "teardown",
        }
    }

    /// Whether the step is work of our own before the program can start (as opposed to
    /// the kernel's namespaces, mounts and cgroups, the program itself, or the end).
    pub fn is_preparation(self) -> bool {
        matches!(
            self,
            TimedStep::Store
                | TimedStep::Authorise
                | TimedStep::Admit
                | TimedStep::Compile
                | TimedStep::HostPaths
                | TimedStep::Bundle
                | TimedStep::Prepare
        )
    }
}

impl fmt::Display for TimedStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Microseconds per step, kept in the order the steps run (the order of [`TimedStep`]),
/// however they were added or read; a step that runs twice (the cgroup is made before the
/// clone and joined after it) adds to its one entry. Serialised as one JSON object,
/// `{"compile": 45, "authorise": 112, ...}`, which a reader without ordered maps can put
/// back in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepTimings(Vec<(TimedStep, u64)>);

impl StepTimings {
    pub fn add(&mut self, step: TimedStep, us: u64) {
        match self.0.binary_search_by_key(&step, |(s, _)| *s) {
            Ok(i) => self.0[i].1 += us,
            Err(i) => self.0.insert(i, (step, us)),
        }
    }

    pub fn get(&self, step: TimedStep) -> Option<u64> {
        self.0.iter().find(|(s, _)| *s == step).map(|(_, us)| *us)
    }

    pub fn iter(&self) -> impl Iterator<Item = (TimedStep, u64)> + '_ {
        self.0.iter().copied()
    }

    pub fn total_us(&self) -> u64 {
        self.0.iter().map(|(_, us)| us).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds `other`'s steps after this one's.
    pub fn extend(&mut self, other: &StepTimings) {
        for (step, us) in other.iter() {
            self.add(step, us);
        }
    }

    /// A small table for a terminal: one line per step, then the preparation (our own
    /// userspace before the program can start) and the total.
    pub fn table(&self) -> String {
        let mut out = format!("{:<14}{:>9}\n", "step", "µs");
        for (step, us) in self.iter() {
            out.push_str(&format!("{:<14}{:>8}\n", step.as_str(), us));
        }
        let preparation: u64 = self
            .iter()
            .filter(|(s, _)| s.is_preparation())
            .map(|(_, us)| us)
            .sum();
        out.push_str(&format!("{:<14}{:>8}\n", "(preparation)", preparation));
        out.push_str(&format!("{:<14}{:>8}\n", "total", self.total_us()));
        out
    }
}

impl Serialize for StepTimings {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (step, us) in &self.0 {
            map.serialize_entry(step, us)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for StepTimings {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct InOrder;
        impl<'de> Visitor<'de> for InOrder {
            type Value = StepTimings;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of step names and microseconds")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StepTimings, A::Error> {
                let mut timings = StepTimings::default();
                while let Some((step, us)) = map.next_entry::<TimedStep, u64>()? {
                    if timings.get(step).is_some() {
                        return Err(serde::de::Error::custom(format!(
                            "step `{step}` is named twice"
                        )));
                    }
                    timings.add(step, us);
                }
                Ok(timings)
            }
        }
        deserializer.deserialize_map(InOrder)
    }
}

/// The monotonic clock in nanoseconds: the same clock in every namespace this project
/// makes (none of them is a time namespace).
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        // CLOCK_MONOTONIC cannot fail on Linux; a zero only makes one step read long.
        .unwrap_or(0)
}

/// Laps of one run: each [`Stopwatch::lap`] charges the time since the last lap to a step.
#[derive(Debug, Clone)]
pub struct Stopwatch {
    last_ns: u64,
    timings: StepTimings,
}

impl Default for Stopwatch {
    fn default() -> Self {
        Self::start()
    }
}

impl Stopwatch {
    pub fn start() -> Self {
        Self {
            last_ns: monotonic_ns(),
            timings: StepTimings::default(),
        }
    }

    /// Charges the time since the last lap to `step`.
    pub fn lap(&mut self, step: TimedStep) {
        self.lap_at(step, monotonic_ns());
    }

    /// Charges the time up to `at_ns` (a [`monotonic_ns`] reading, possibly another
    /// process's) to `step`. A reading earlier than the last lap charges nothing.
    pub fn lap_at(&mut self, step: TimedStep, at_ns: u64) {
        let elapsed = at_ns.saturating_sub(self.last_ns);
        self.timings.add(step, elapsed / 1000);
        self.last_ns = self.last_ns.max(at_ns);
    }

    pub fn timings(&self) -> &StepTimings {
        &self.timings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_serialise_as_one_object_in_the_order_the_steps_run() {
        let mut t = StepTimings::default();
        t.add(TimedStep::Cgroup, 7);
        t.add(TimedStep::Compile, 40);
        t.add(TimedStep::Clone, 3);
        t.add(TimedStep::Authorise, 100);
        t.add(TimedStep::Cgroup, 5);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(
            json,
            r#"{"compile":40,"authorise":100,"cgroup":12,"clone":3}"#
        );
        let back: StepTimings = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.total_us(), 155);
        // A map that lost its order (serde_json::Value sorts keys) reads back in order.
        let value = serde_json::to_value(&t).unwrap();
        assert_eq!(
            value.as_object().unwrap().keys().next().map(String::as_str),
            Some("authorise")
        );
        assert_eq!(serde_json::from_value::<StepTimings>(value).unwrap(), t);
    }

    #[test]
    fn a_step_named_twice_or_unknown_is_refused() {
        let twice = serde_json::from_str::<StepTimings>(r#"{"clone":1,"clone":2}"#);
        assert!(
            twice
                .unwrap_err()
                .to_string()
                .contains("`clone` is named twice"),
            "a repeated step must not be summed silently"
        );
        let unknown = serde_json::from_str::<StepTimings>(r#"{"warp":1}"#).unwrap_err();
        assert!(
            unknown.to_string().contains("unknown variant `warp`"),
            "{unknown}"
        );
    }

    #[test]
    fn laps_are_contiguous_and_never_run_backwards() {
        let mut w = Stopwatch::start();
        let t0 = w.last_ns;
        w.lap_at(TimedStep::Prepare, t0 + 5_000);
        // A reading from before the last lap (another process's clock read early)
        // charges nothing and does not move the start of the next step back.
        w.lap_at(TimedStep::Clone, t0 + 1_000);
        w.lap_at(TimedStep::Exec, t0 + 12_000);
        let steps: Vec<_> = w.timings().iter().collect();
        assert_eq!(
            steps,
            vec![
                (TimedStep::Prepare, 5),
                (TimedStep::Clone, 0),
                (TimedStep::Exec, 7)
            ]
        );
        assert_eq!(w.timings().total_us(), 12);
    }

    #[test]
    fn the_table_names_every_step_and_the_preparation() {
        let mut t = StepTimings::default();
        t.add(TimedStep::Authorise, 100);
        t.add(TimedStep::Bundle, 50);
        t.add(TimedStep::Clone, 400);
        let table = t.table();
        let rows: Vec<Vec<&str>> = table
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows,
            vec![
                vec!["step", "µs"],
                vec!["authorise", "100"],
                vec!["bundle", "50"],
                vec!["clone", "400"],
                vec!["(preparation)", "150"],
                vec!["total", "550"],
            ]
        );
    }
}
