//! The committed CRDs (in `crds/` and in the chart) are exactly what the code
//! generates, every field is documented, and the examples parse as our types.

use std::path::Path;

use headscale_operator::api;

const REGENERATE: &str =
    "cargo run -- crd --dir crds && cp crds/*.yaml charts/headscale-operator/files/crds/";

#[test]
fn committed_crds_match_the_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut stale = Vec::new();
    for crd in api::crds() {
        let want = api::crd_yaml(&crd).unwrap();
        let name = api::crd_file_name(&crd);
        for dir in ["crds", "charts/headscale-operator/files/crds"] {
            let path = root.join(dir).join(&name);
            let have = std::fs::read_to_string(&path).unwrap_or_default();
            if have != want {
                stale.push(path.display().to_string());
            }
        }
    }
    assert!(
        stale.is_empty(),
        "these CRD files differ from the code: {stale:?}\nregenerate them with:\n  {REGENERATE}"
    );
    // No stray files either.
    for dir in ["crds", "charts/headscale-operator/files/crds"] {
        let count = std::fs::read_dir(root.join(dir)).unwrap().count();
        assert_eq!(
            count,
            api::crds().len(),
            "{dir} holds files the code does not generate"
        );
    }
}

#[test]
fn every_field_has_a_description() {
    fn walk(schema: &serde_json::Value, path: &str, missing: &mut Vec<String>) {
        if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
            for (k, v) in props {
                let p = format!("{path}.{k}");
                let builtin = matches!(p.as_str(), ".apiVersion" | ".kind" | ".metadata");
                if !builtin && v.get("description").is_none() {
                    missing.push(p.clone());
                }
                walk(v, &p, missing);
            }
        }
        if let Some(items) = schema.get("items") {
            walk(items, &format!("{path}[]"), missing);
        }
        if let Some(ap) = schema.get("additionalProperties").filter(|a| a.is_object()) {
            walk(ap, &format!("{path}{{}}"), missing);
        }
    }
    for crd in api::crds() {
        let json = serde_json::to_value(&crd).unwrap();
        let schema = &json["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut missing = Vec::new();
        walk(schema, "", &mut missing);
        assert!(
            missing.is_empty(),
            "{}: fields without description: {missing:?}",
            crd.spec.names.kind
        );
    }
}

#[test]
fn descriptions_have_no_hard_line_breaks_inside_a_paragraph() {
    // `kubectl explain` prints a description as it is: a doc comment's line breaks
    // would show as "the\n oldest".
    fn walk(value: &serde_json::Value, path: &str, bad: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match v.as_str() {
                        Some(text) if k == "description" => {
                            let has_break = text.split("\n\n").any(|para| {
                                !para.contains("```")
                                    && para
                                        .split('\n')
                                        .skip(1)
                                        .any(|line| !line.starts_with([' ', '\t', '-', '*']))
                            });
                            if has_break {
                                bad.push(format!("{path}: {text:?}"));
                            }
                        }
                        _ => walk(v, &format!("{path}.{k}"), bad),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, path, bad)),
            _ => {}
        }
    }
    let mut bad = Vec::new();
    for crd in api::crds() {
        walk(
            &serde_json::to_value(&crd).unwrap(),
            &crd.spec.names.kind,
            &mut bad,
        );
    }
    assert!(bad.is_empty(), "descriptions with hard line breaks: {bad:#?}");
    assert_eq!(
        api::reflow_description("the\noldest one.\n\nA new\nparagraph:\n - a list item"),
        "the oldest one.\n\nA new paragraph:\n - a list item"
    );
    // The DnsConfig's two switches say they are on by default.
    let dns = serde_json::to_value(
        api::crds()
            .into_iter()
            .find(|c| c.spec.names.kind == "DnsConfig")
            .unwrap(),
    )
    .unwrap();
    let spec = &dns["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    for field in ["magicDns", "overrideLocalDns"] {
        let text = spec[field]["description"].as_str().unwrap();
        assert!(text.contains("Defaults to true"), "{field}: {text}");
    }
}

#[test]
fn examples_parse_as_our_types() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(doc).unwrap();
            let kind = value
                .get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or_default()
                .to_string();
            let json = serde_json::to_value(&value).unwrap();
            let res = match kind.as_str() {
                "HeadscaleServer" => serde_json::from_value::<api::HeadscaleServer>(json).map(drop),
                "AclPolicy" => serde_json::from_value::<api::AclPolicy>(json).map(drop),
                "DnsConfig" => serde_json::from_value::<api::DnsConfig>(json).map(drop),
                "NodeApproval" => serde_json::from_value::<api::NodeApproval>(json).map(drop),
                _ => Ok(()),
            };
            res.unwrap_or_else(|e| panic!("{}: {kind}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(seen > 0, "no examples found in {}", root.display());
}

use serde::Deserialize;
