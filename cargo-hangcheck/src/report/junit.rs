//! JUnit XML for CI systems: one suite per test target, one case per test, and a
//! `hangcheck` suite whose cases fail for each leak and for a shutdown hang, so that CI
//! dashboards show those findings next to the tests.

use std::time::Duration;

use quick_junit::{NonSuccessKind, Report as JunitReport, TestCase, TestCaseStatus, TestSuite};

use super::{Report, ShutdownOutcome, TestOutcome};
use crate::cli::StallVerdict;

/// Renders the report as JUnit XML.
pub fn render(report: &Report) -> String {
    let mut junit = JunitReport::new("hangcheck");
    junit.set_time(Duration::from_millis(report.duration_ms));
    let mut suites: Vec<TestSuite> = Vec::new();
    for t in &report.tests {
        let status = match t.outcome {
            TestOutcome::Passed => TestCaseStatus::success(),
            TestOutcome::Ignored => TestCaseStatus::skipped(),
            outcome => {
                let other = outcome.name();
                let mut s = TestCaseStatus::non_success(if outcome == TestOutcome::SpawnFailed {
                    NonSuccessKind::Error
                } else {
                    NonSuccessKind::Failure
                });
                if let Some(p) = &t.panic {
                    s.set_description(p.message.clone());
                }
                let message = match (&t.detail, t.evidence.first()) {
                    (Some(d), _) => match t.panic.as_ref() {
                        Some(p) => {
                            let first = p.message.lines().next().unwrap_or("");
                            let at = p.location.as_deref().map(|l| format!(" at {l}")).unwrap_or_default();
                            format!("{other}: panicked{at}: {first}")
                        }
                        None => format!("{other}: {d}"),
                    },
                    (None, Some(e)) => format!("{other}; evidence in {}", e.display()),
                    (None, None) => other.to_owned(),
                };
                s.set_message(message);
                s
            }
        };
        let mut case = TestCase::new(t.name.clone(), status);
        case.set_classname(t.target.clone());
        case.set_time(Duration::from_millis(t.duration_ms));
        if t.reached_server == Some(false) {
            case.add_property(("hangcheck.reached-server", "false"));
            case.set_system_out(
                "hangcheck: this test did not reach the server (it spawned no task and moved no counter)",
            );
        }
        match suites.iter_mut().find(|s| s.name.as_str() == t.target) {
            Some(suite) => {
                suite.add_test_case(case);
            }
            None => {
                let mut suite = TestSuite::new(t.target.clone());
                suite.add_test_case(case);
                suites.push(suite);
            }
        }
    }
    let mut findings = TestSuite::new("hangcheck");
    for leak in &report.leaks {
        let mut status =
            if leak.fails { TestCaseStatus::non_success(NonSuccessKind::Failure) } else { TestCaseStatus::skipped() };
        let tests: Vec<String> = leak.leaked_by.iter().map(|b| format!("{} ({})", b.test, b.count)).collect();
        status.set_message(format!(
            "task group `{}` grew by {} (allowed {}); leaked by {}",
            leak.group,
            leak.growth,
            leak.allowed,
            tests.join(", ")
        ));
        findings.add_test_case(TestCase::new(format!("leak::{}", leak.group), status));
    }
    for (i, stall) in report.stalls.iter().enumerate() {
        let message = format!(
            "worker caught stuck {} ms in one poll ({} ms in all) during {}, in {}",
            stall.stuck_ms,
            stall.total_ms.map_or("?".to_owned(), |t| t.to_string()),
            stall.test.as_deref().unwrap_or("?"),
            stall.blocked_in.as_deref().unwrap_or("?")
        );
        let case = if report.stall_verdict == StallVerdict::Warn {
            let mut case = TestCase::new(format!("stall::{}", i + 1), TestCaseStatus::success());
            case.set_system_out(format!("warning (stall-verdict = warn): {message}"));
            case
        } else {
            let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
            status.set_message(message);
            TestCase::new(format!("stall::{}", i + 1), status)
        };
        findings.add_test_case(case);
    }
    if report.shutdown.outcome == ShutdownOutcome::Hung {
        let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
        status.set_message("the server did not exit within the shutdown grace period and was killed");
        findings.add_test_case(TestCase::new("shutdown", status));
    } else if report.shutdown.outcome == ShutdownOutcome::Clean {
        findings.add_test_case(TestCase::new("shutdown", TestCaseStatus::success()));
    }
    if report.leaks.is_empty() && report.error.is_none() {
        findings.add_test_case(TestCase::new("leaks", TestCaseStatus::success()));
    }
    suites.push(findings);
    junit.add_test_suites(suites);
    junit.to_string().unwrap_or_else(|e| format!("<!-- cannot render JUnit XML: {e} -->\n"))
}
