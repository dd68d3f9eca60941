//! Drift: whether a live object still holds everything the operator applied. The API
//! server adds defaults (`imagePullPolicy`, `protocol`, ...) and rewrites quantities
//! into canonical form (`0.5` CPU is stored as `500m`), so the test is "the live
//! object contains the desired one", with quantities compared by value. Pure.

use serde_json::Value;

/// True when every field of `desired` is in `live` with the same value. Missing in
/// `live` equals an empty list, an empty map or null in `desired` (the API server
/// drops those); lists must match element by element.
pub fn contains(live: &Value, desired: &Value) -> bool {
    match (live, desired) {
        (_, Value::Null) => true,
        (Value::Object(l), Value::Object(d)) => d.iter().all(|(k, dv)| match l.get(k) {
            Some(lv) => contains(lv, dv),
            None => is_empty(dv),
        }),
        (Value::Array(l), Value::Array(d)) => {
            l.len() == d.len() && l.iter().zip(d).all(|(lv, dv)| contains(lv, dv))
        }
        (Value::String(l), Value::String(d)) => l == d || same_quantity(l, d),
        (Value::Number(l), Value::String(d)) | (Value::String(d), Value::Number(l)) => {
            same_quantity(&l.to_string(), d)
        }
        (l, d) => l == d,
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// Two Kubernetes quantities with the same value (`1Gi` and `1024Mi`, `0.5` and `500m`).
fn same_quantity(a: &str, b: &str) -> bool {
    match (quantity(a), quantity(b)) {
        (Some(x), Some(y)) => (x - y).abs() <= f64::EPSILON * x.abs().max(y.abs()).max(1.0),
        _ => false,
    }
}

fn quantity(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(s.len());
    if split == 0 {
        return None;
    }
    let (num, suffix) = s.split_at(split);
    let num: f64 = num.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => return None,
    };
    Some(num * factor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_added_by_the_api_server_are_not_drift() {
        let desired =
            json!({"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 80}]}], "env": []}});
        let live = json!({"spec": {"containers": [{"name": "a", "imagePullPolicy": "IfNotPresent",
            "ports": [{"containerPort": 80, "protocol": "TCP"}]}], "dnsPolicy": "ClusterFirst"}});
        assert!(contains(&live, &desired));
    }

    #[test]
    fn edits_are_drift() {
        let desired = json!({"spec": {"containers": [{"name": "a", "image": "headscale:0.29.2"}]}});
        let edited = json!({"spec": {"containers": [{"name": "a", "image": "evil:latest"}]}});
        assert!(!contains(&edited, &desired));
        let added =
            json!({"spec": {"containers": [{"name": "a", "image": "headscale:0.29.2"}, {"name": "b"}]}});
        assert!(!contains(&added, &desired));
        assert!(!contains(
            &json!({"data": {"config.yaml": "x: 2"}}),
            &json!({"data": {"config.yaml": "x: 1"}})
        ));
    }

    #[test]
    fn quantities_compare_by_value() {
        assert!(contains(&json!({"cpu": "500m"}), &json!({"cpu": "0.5"})));
        assert!(contains(&json!({"memory": "1Gi"}), &json!({"memory": "1024Mi"})));
        assert!(contains(&json!({"storage": "1Gi"}), &json!({"storage": "1Gi"})));
        assert!(!contains(&json!({"memory": "1G"}), &json!({"memory": "1Gi"})));
        assert!(!contains(&json!({"name": "http"}), &json!({"name": "https"})));
    }
}
