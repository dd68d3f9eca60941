//! Headscale's extra-records file (`dns.extra_records_path`): the JSON list of A and
//! AAAA records it watches and serves without a restart. Pure.
//!
//! Headscale (0.28.0 and 0.29.2, `hscontrol/dns/extrarecords.go`) re-reads the file on
//! every create, write or chmod event, and after a remove or rename (the kubelet's
//! atomic swap of a ConfigMap volume) it re-adds the watch and reads it again. It
//! ignores a file that is empty (0 bytes) or `null`, but applies `[]`: so the file is
//! never empty, and no records is `[]`.

use std::net::IpAddr;

use serde::Serialize;

use super::validate::is_dns_name;
use super::{Problem, reason};
use crate::api::dns::{ExtraRecord, RecordType};

/// The records file for `records`: a JSON array sorted by name, type and value (the
/// same records in any order give the same bytes), `[]` for none.
pub fn render_records(records: &[ExtraRecord]) -> String {
    #[derive(Serialize, PartialEq, Eq, PartialOrd, Ord)]
    struct Record<'a> {
        name: &'a str,
        #[serde(rename = "type")]
        type_: &'static str,
        value: &'a str,
    }
    let mut list: Vec<Record> = records
        .iter()
        .map(|r| Record {
            name: &r.name,
            type_: r.type_.as_str(),
            value: &r.value,
        })
        .collect();
    list.sort();
    list.dedup();
    if list.is_empty() {
        return "[]\n".to_string();
    }
    let lines: Vec<String> = list
        .iter()
        .map(|r| serde_json::to_string(r).unwrap_or_default())
        .collect();
    format!("[\n  {}\n]\n", lines.join(",\n  "))
}

/// Everything wrong with `records`: names that are not DNS names (wildcards included),
/// addresses of the wrong family, the same record twice, and a record for the server
/// URL's own host (clients would send their control connection to that address).
pub fn check_records(records: &[ExtraRecord], server_host: Option<&str>) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut seen: Vec<(&str, RecordType, IpAddr)> = Vec::new();
    let bad = |message: String| Problem::new(reason::INVALID_EXTRA_RECORD, message);
    for (i, r) in records.iter().enumerate() {
        let at = format!("extraRecords[{i}] ({} {} {})", r.name, r.type_.as_str(), r.value);
        if r.name.contains('*') {
            problems.push(bad(format!(
                "{at}: wildcard names are not served: Headscale and Tailscale clients match record \
                 names exactly; list each name"
            )));
        } else if !is_dns_name(&r.name) {
            problems.push(bad(format!(
                "{at}: {:?} is not a DNS name (lowercase labels of letters, digits and '-', \
                 separated by dots, no trailing dot)",
                r.name
            )));
        } else if server_host == Some(r.name.as_str()) {
            problems.push(bad(format!(
                "{at}: the name is the server URL's host: clients would send their connection \
                 to the control server to {} and lose it",
                r.value
            )));
        }
        let addr = r.value.parse::<IpAddr>().ok();
        let family_ok = matches!(
            (r.type_, addr),
            (RecordType::A, Some(IpAddr::V4(_))) | (RecordType::AAAA, Some(IpAddr::V6(_)))
        );
        if !family_ok {
            let want = match r.type_ {
                RecordType::A => "an IPv4 address",
                RecordType::AAAA => "an IPv6 address",
            };
            problems.push(bad(format!(
                "{at}: the value of an {} record must be {want}",
                r.type_.as_str()
            )));
            continue;
        }
        if let Some(addr) = addr {
            if seen
                .iter()
                .any(|(n, t, a)| *n == r.name && *t == r.type_ && *a == addr)
            {
                problems.push(bad(format!("{at}: the same record is listed twice")));
            }
            seen.push((&r.name, r.type_, addr));
        }
    }
    problems
}

/// The number of records in a records file, `None` when it is not a JSON list.
pub fn count_records(file: &str) -> Option<usize> {
    serde_json::from_str::<Vec<serde_json::Value>>(file)
        .ok()
        .map(|v| v.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, t: RecordType, value: &str) -> ExtraRecord {
        ExtraRecord {
            name: name.into(),
            type_: t,
            value: value.into(),
        }
    }

    #[test]
    fn the_file_is_sorted_deterministic_and_never_empty() {
        assert_eq!(render_records(&[]), "[]\n");
        let a = rec("b.tailnet.example.net", RecordType::A, "100.64.0.2");
        let b = rec("a.tailnet.example.net", RecordType::AAAA, "fd7a:115c:a1e0::2");
        let text = render_records(&[a.clone(), b.clone()]);
        assert_eq!(text, render_records(&[b, a]));
        assert_eq!(
            text,
            "[\n  {\"name\":\"a.tailnet.example.net\",\"type\":\"AAAA\",\"value\":\"fd7a:115c:a1e0::2\"},\n  \
             {\"name\":\"b.tailnet.example.net\",\"type\":\"A\",\"value\":\"100.64.0.2\"}\n]\n"
        );
        assert_eq!(count_records(&text), Some(2));
        assert_eq!(count_records("[]\n"), Some(0));
        assert_eq!(count_records("nope"), None);
    }

    #[test]
    fn bad_records_are_refused_with_the_record_named() {
        let host = Some("hs.example.com");
        for (r, words) in [
            (
                rec("*.tailnet.example.net", RecordType::A, "100.64.0.1"),
                vec!["wildcard"],
            ),
            (
                rec("Grafana.example.net", RecordType::A, "100.64.0.1"),
                vec!["not a DNS name"],
            ),
            (
                rec("grafana.example.net.", RecordType::A, "100.64.0.1"),
                vec!["no trailing dot"],
            ),
            (
                rec("grafana.example.net", RecordType::A, "fd7a::1"),
                vec!["IPv4 address"],
            ),
            (
                rec("grafana.example.net", RecordType::AAAA, "100.64.0.1"),
                vec!["IPv6 address"],
            ),
            (
                rec("grafana.example.net", RecordType::A, "grafana"),
                vec!["IPv4 address"],
            ),
            (
                rec("hs.example.com", RecordType::A, "100.64.0.1"),
                vec!["server URL's host"],
            ),
        ] {
            let problems = check_records(std::slice::from_ref(&r), host);
            assert_eq!(problems.len(), 1, "{r:?}: {problems:?}");
            assert_eq!(problems[0].reason, "InvalidExtraRecord");
            for w in words.iter().chain(&["extraRecords[0]"]) {
                assert!(
                    problems[0].message.contains(w),
                    "{:?} lacks {w:?}",
                    problems[0].message
                );
            }
        }
        let dup = [
            rec("a.example.net", RecordType::AAAA, "fd7a::1"),
            rec("a.example.net", RecordType::AAAA, "FD7A:0::1"),
        ];
        let problems = check_records(&dup, host);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].message.contains("extraRecords[1]") && problems[0].message.contains("twice"));
        // Two addresses for one name, and one address for two names, are fine.
        let ok = [
            rec("a.example.net", RecordType::A, "100.64.0.1"),
            rec("a.example.net", RecordType::A, "100.64.0.2"),
            rec("b.example.net", RecordType::A, "100.64.0.1"),
            rec("a.example.net", RecordType::AAAA, "fd7a:115c:a1e0::1"),
            rec("ts.hs.example.com", RecordType::A, "100.64.0.1"),
        ];
        assert!(check_records(&ok, host).is_empty());
    }
}
