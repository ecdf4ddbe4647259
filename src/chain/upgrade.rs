//! Upgrade plans as one node lives them: when to tell the operator, and where to
//! stop. Pure: the driver hands it the tip and the schedule after every block
//! (and once at start-up) and carries out what it answers.
//!
//! # Rules
//!
//! * A node runs the protocol versions up to its binary's `max_version`
//!   ([`super::rules::MAX_VERSION`] unless a rehearsal lowers or raises it).
//! * **Warned once per plan.** When a completed plan for a version above
//!   `max_version` is first seen in the schedule (the block that completed it,
//!   or the first start of a node that finds it there), one warning names the
//!   version, the height and the blocks left; another, once, when at most
//!   [`UPGRADE_REMINDER`] heights are left.
//! * **Stop before the height.** When the next height (the tip + 1) is at or
//!   past the height of a plan for a version above `max_version`, the node must
//!   not take part in it: it signs nothing at that height and stops
//!   ([`Step::Halt`]). This holds at start-up as well: a restart with the same
//!   binary stops again at once; a binary that runs the version goes on.
//! * A plan this binary runs is logged once when its height becomes the next
//!   one (the rules change from that block on).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::block::Height;
use super::members::Plan;

/// Heights before a plan's height at which its warning is given again.
pub(crate) const UPGRADE_REMINDER: Height = 5;

/// The file in the data directory that a node stopping before a plan's height
/// writes, in the form Cosmovisor watches (`$DAEMON_HOME/data/upgrade-info.json`).
pub(crate) const UPGRADE_INFO_FILE: &str = "upgrade-info.json";

/// A node stopped before `plan`'s height: its binary runs protocol versions up
/// to `max_version` only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the chain switches to protocol {} at height {}; this binary runs up to protocol {max_version}",
    plan.version,
    plan.height
)]
pub struct UpgradeNeeded {
    pub plan: Plan,
    pub max_version: u16,
}

/// `upgrade-info.json` as Cosmovisor reads it (the upgrade module's `Plan`:
/// `name`, `height`, `info`). Cosmovisor switches to the binary in
/// `cosmovisor/upgrades/<name>/bin` and lower-cases the name, so the name is
/// lower case already.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UpgradeInfo {
    pub name: String,
    pub height: Height,
    pub info: String,
}

impl UpgradeInfo {
    pub(crate) fn of(needed: &UpgradeNeeded) -> UpgradeInfo {
        let Plan { version, height } = needed.plan;
        UpgradeInfo {
            name: plan_name(version),
            height,
            info: format!(
                "masternode: protocol {version} from height {height}; this binary ({}) runs up to protocol {}",
                env!("CARGO_PKG_VERSION"),
                needed.max_version
            ),
        }
    }
}

/// The name of the upgrade to protocol `version`, as `upgrade-info.json` and
/// Cosmovisor's `upgrades/<name>` directory spell it.
pub(crate) fn plan_name(version: u16) -> String {
    format!("protocol-{version}")
}

/// What the tip moving means for the operator and for this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// A plan this binary cannot run is scheduled (`reminder`: the second
    /// warning, [`UPGRADE_REMINDER`] heights or fewer before it).
    Unsupported { plan: Plan, blocks_left: Height, max_version: u16, reminder: bool },
    /// A plan this binary runs applies from the next height on.
    Activates { plan: Plan },
    /// The next height is at or past the height of a plan this binary cannot
    /// run: stop without signing anything there.
    Halt { plan: Plan, max_version: u16 },
}

/// What this node said about which plan, so each line comes once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UpgradeWatch {
    max_version: u16,
    /// Plans warned about, and those whose reminder was given.
    warned: BTreeSet<Plan>,
    reminded: BTreeSet<Plan>,
    activated: BTreeSet<Plan>,
}

impl UpgradeWatch {
    pub(crate) fn new(max_version: u16) -> UpgradeWatch {
        UpgradeWatch { max_version, warned: BTreeSet::new(), reminded: BTreeSet::new(), activated: BTreeSet::new() }
    }

    /// Whether this binary runs `plan`'s version.
    pub(crate) fn runs(&self, plan: &Plan) -> bool {
        plan.version <= self.max_version
    }

    /// The chain's tip is now `tip` with `schedule` (in height order): what to
    /// say, and a [`Step::Halt`] last if the next height must not be started.
    pub(crate) fn handle_tip(&mut self, tip: Height, schedule: &[Plan]) -> Vec<Step> {
        let next = tip.saturating_add(1);
        let mut out = Vec::new();
        // The plan in force at the next height decides whether this node may
        // start it; the schedule is in height (and version) order.
        if let Some(plan) = schedule.iter().rev().find(|p| p.height <= next).copied() {
            if !self.runs(&plan) {
                out.push(Step::Halt { plan, max_version: self.max_version });
                return out;
            }
            if plan.height == next && self.activated.insert(plan) {
                out.push(Step::Activates { plan });
            }
        }
        let max_version = self.max_version;
        for plan in schedule.iter().filter(|p| p.height > next && p.version > max_version) {
            let blocks_left = plan.height - next;
            let first = self.warned.insert(*plan);
            let near = blocks_left <= UPGRADE_REMINDER;
            if first {
                // A plan first seen within the reminder's reach is warned about once.
                if near {
                    self.reminded.insert(*plan);
                }
                out.push(Step::Unsupported { plan: *plan, blocks_left, max_version, reminder: false });
            } else if near && self.reminded.insert(*plan) {
                out.push(Step::Unsupported { plan: *plan, blocks_left, max_version, reminder: true });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(version: u16, height: Height) -> Plan {
        Plan { version, height }
    }

    #[test]
    fn a_plan_this_binary_cannot_run_is_warned_about_once_then_once_more_near_its_height_and_stops_the_node_before_it()
    {
        let mut w = UpgradeWatch::new(4);
        let schedule = [plan(5, 100)];
        // (tip, what it says)
        let table: Vec<(Height, Vec<Step>)> = vec![
            (60, vec![Step::Unsupported { plan: plan(5, 100), blocks_left: 39, max_version: 4, reminder: false }]),
            (61, vec![]),
            (93, vec![]),
            (94, vec![Step::Unsupported { plan: plan(5, 100), blocks_left: 5, max_version: 4, reminder: true }]),
            (95, vec![]),
            (98, vec![]),
            (99, vec![Step::Halt { plan: plan(5, 100), max_version: 4 }]),
        ];
        for (tip, want) in table {
            assert_eq!(w.handle_tip(tip, &schedule), want, "tip {tip}");
        }
        assert_eq!(w.handle_tip(99, &schedule), vec![Step::Halt { plan: plan(5, 100), max_version: 4 }], "again");
    }

    #[test]
    fn a_node_restarted_at_or_past_the_height_stops_at_once_and_one_that_runs_the_version_goes_on() {
        let schedule = [plan(4, 50), plan(5, 100)];
        let halt = vec![Step::Halt { plan: plan(5, 100), max_version: 4 }];
        assert_eq!(UpgradeWatch::new(4).handle_tip(99, &schedule), halt, "restarted with the same binary");
        assert_eq!(UpgradeWatch::new(4).handle_tip(150, &schedule), halt, "a binary that runs less than the chain");
        assert_eq!(
            UpgradeWatch::new(3).handle_tip(10, &schedule),
            vec![
                Step::Unsupported { plan: plan(4, 50), blocks_left: 39, max_version: 3, reminder: false },
                Step::Unsupported { plan: plan(5, 100), blocks_left: 89, max_version: 3, reminder: false },
            ],
        );
        assert_eq!(UpgradeWatch::new(5).handle_tip(99, &schedule), vec![Step::Activates { plan: plan(5, 100) }]);
        assert_eq!(UpgradeWatch::new(5).handle_tip(150, &schedule), vec![], "long since in force");
    }

    #[test]
    fn a_plan_first_seen_near_its_height_is_warned_about_once() {
        let mut w = UpgradeWatch::new(4);
        let schedule = [plan(5, 100)];
        assert_eq!(
            w.handle_tip(96, &schedule),
            vec![Step::Unsupported { plan: plan(5, 100), blocks_left: 3, max_version: 4, reminder: false }]
        );
        assert_eq!(w.handle_tip(97, &schedule), vec![]);
    }

    #[test]
    fn upgrade_info_is_what_cosmovisor_reads() {
        let needed = UpgradeNeeded { plan: plan(5, 120), max_version: 4 };
        let json = serde_json::to_value(UpgradeInfo::of(&needed)).unwrap();
        assert_eq!(json["name"], "protocol-5");
        assert_eq!(json["height"], 120, "a number, as the upgrade module writes it");
        assert!(json["info"].as_str().unwrap().contains("runs up to protocol 4"), "{json}");
        assert_eq!(json.as_object().unwrap().len(), 3);
        assert_eq!(
            needed.to_string(),
            "the chain switches to protocol 5 at height 120; this binary runs up to protocol 4"
        );
    }

    #[test]
    fn a_runnable_plan_is_announced_once_as_its_height_comes() {
        let mut w = UpgradeWatch::new(4);
        let schedule = [plan(4, 30)];
        assert_eq!(w.handle_tip(20, &schedule), vec![], "nothing to warn about");
        assert_eq!(w.handle_tip(29, &schedule), vec![Step::Activates { plan: plan(4, 30) }]);
        assert_eq!(w.handle_tip(29, &schedule), vec![]);
        assert_eq!(w.handle_tip(30, &schedule), vec![]);
        assert_eq!(w.handle_tip(u64::MAX, &schedule), vec![], "nothing overflows");
    }
}
