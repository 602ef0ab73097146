//! `probe`: the client side of the operator's playbook (DESIGN.md §7):
//! resolve, connect, inspect, judge, report. These modules are the DNS
//! half: lookups (`dns`), DANE matching (`dane`), MTA-STS discovery and
//! policy (`mta_sts`) and TLS-RPT (`tlsrpt`). They return structured
//! values and errors; findings and output are the report's job.

pub mod dane;
pub mod dns;
pub mod mta_sts;
mod tagged;
pub mod tlsrpt;
