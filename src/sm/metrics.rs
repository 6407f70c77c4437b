//! The Security Manager's figures for `/metrics`, read from [`SmStats`].

use super::SmStats;
use crate::figures::{Figure, Figures};

impl Figures for SmStats {
    fn figures(&self, out: &mut Vec<Figure>) {
        out.extend([
            Figure::count(
                "sm_accepted",
                "Elements the Security Manager let through (SM_ENABLED)",
                &self.accepted,
            ),
            Figure::counters(
                "sm_rejected",
                "Elements the Security Manager refused, by reason",
                "reason",
                self.rejected(),
            ),
            Figure::count(
                "sm_signed",
                "Outgoing elements signed with SM_KEY",
                &self.signed,
            ),
            Figure::count(
                "sm_governance_writes",
                "Role assignments written by SM_RULES",
                &self.governance_writes,
            ),
            Figure::count(
                "sm_governance_failures",
                "Role assignments SM_RULES could not write",
                &self.governance_failures,
            ),
        ]);
    }
}
