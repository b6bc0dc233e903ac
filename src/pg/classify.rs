//! Which PostgreSQL errors mean "these rows can never be stored" and which mean "try again".

use crate::sink::FailureKind;

/// Classifies a failed write by its SQLSTATE (`None`: no answer from the server at all).
///
/// | SQLSTATE | meaning | kind |
/// | --- | --- | --- |
/// | class `22` | data exception: value too long (22001), bad text representation, out of range | rejected |
/// | class `23` | integrity constraint: NOT NULL, foreign key, unique (other than the id), CHECK | rejected |
/// | `P0001`, `P0004` | raised by a trigger or an `ASSERT` | rejected |
/// | class `54` | program limit: a payload nested too deep for the server (`54001`), an index row too large | rejected |
/// | none | connection refused or reset, timeout, TLS, pool | transient |
/// | class `08` | connection exception | transient |
/// | `40001`, `40P01` | serialization failure, deadlock | transient |
/// | class `53` | insufficient resources (`53300` too many connections, disk full) | transient |
/// | class `57` | operator intervention (`57P01` admin shutdown, `57014` statement timeout) | transient |
/// | `25006` | read-only transaction (a standby after a failover) | transient |
/// | anything else | e.g. `42P01` table missing, `42501` no privilege: every row would fail | transient |
///
/// Only rejected errors lead to dead-lettering; everything else is retried, so a misconfiguration or an
/// outage never empties the buffer into the dead-letter table.
pub fn classify(sqlstate: Option<&str>) -> FailureKind {
    match sqlstate {
        Some(code)
            if ["22", "23", "54"]
                .iter()
                .any(|class| code.starts_with(class)) =>
        {
            FailureKind::Rejected
        }
        Some("P0001" | "P0004") => FailureKind::Rejected,
        _ => FailureKind::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_errors_are_rejected_and_everything_else_is_transient() {
        for code in [
            "22001", "22P02", "22007", "23502", "23503", "23505", "23514", "P0001",
        ] {
            assert_eq!(classify(Some(code)), FailureKind::Rejected, "{code}");
        }
        for code in [
            "08006", "08001", "40001", "40P01", "53300", "57P01", "57014", "25006", "42P01",
            "42501", "XX000",
        ] {
            assert_eq!(classify(Some(code)), FailureKind::Transient, "{code}");
        }
        assert_eq!(classify(None), FailureKind::Transient);
    }
}
