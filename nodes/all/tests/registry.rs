//! Every node family registers cleanly and every declaration is self-consistent.

use std::collections::BTreeSet;

use veetance_core::{NodeRegistry, ParamKind, Params, RunEnv};

#[test]
fn registry_holds_every_family_without_duplicate_names() {
    // `NodeRegistry::add` panics on a duplicate, so building it at all proves uniqueness across
    // families; the count proves no family was skipped.
    let reg = veetance_nodes::registry();
    let mut total = 0;
    for (family, register) in veetance_nodes::FAMILIES {
        let mut own = NodeRegistry::new();
        register(&mut own);
        assert!(!own.is_empty(), "family {family} registers no node");
        total += own.len();
    }
    assert_eq!(reg.len(), total);
    for name in [
        "Int",
        "Float",
        "Bool",
        "String",
        "Seed",
        "LoadImage",
        "SaveImage",
        "ImageResize",
        "ImageBlend",
        "GradientImage",
        "NoiseImage",
    ] {
        assert!(reg.get(name).is_some(), "{name} is not registered");
    }
}

#[test]
fn every_default_passes_its_own_param_check() {
    let reg = veetance_nodes::registry();
    for schema in reg.schemas() {
        for param in &schema.params {
            let default = param.kind.default_value();
            let checked = param.kind.check(&default);
            assert!(
                checked.is_ok(),
                "{}.{}: default {default} fails: {:?}",
                schema.type_name,
                param.name,
                checked.err()
            );
            if let ParamKind::Int { min, max, .. } = param.kind {
                assert!(min <= max, "{}.{}", schema.type_name, param.name);
            }
        }
    }
}

#[test]
fn node_checks_accept_the_defaults_except_for_files_to_choose() {
    // With every param at its default, a node's own check may only complain about a path
    // (there is no sensible default file).
    let reg = veetance_nodes::registry();
    let env = RunEnv::default();
    for schema in reg.schemas() {
        // Registered only to be refused with the reason (see its doc): its check always fails.
        if schema.type_name == "FluxKVCache" {
            continue;
        }
        let def = reg.get(&schema.type_name).unwrap();
        let defaults = Params(
            schema
                .params
                .iter()
                .map(|p| (p.name.clone(), p.kind.default_value()))
                .collect(),
        );
        for problem in def.check(&defaults, &env) {
            let kind = &schema.param_def(&problem.param).unwrap().kind;
            assert!(
                matches!(kind, ParamKind::Path { .. }),
                "{}.{}: {}",
                schema.type_name,
                problem.param,
                problem.message
            );
        }
    }
}

#[test]
fn declarations_are_complete_and_names_unambiguous() {
    let reg = veetance_nodes::registry();
    for schema in reg.schemas() {
        let t = &schema.type_name;
        assert!(!schema.display_name.is_empty(), "{t}");
        assert!(!schema.category.is_empty(), "{t}");
        assert!(!schema.doc.is_empty(), "{t} has no doc");
        assert!(!schema.outputs.is_empty(), "{t} has no output");
        let mut inputs = BTreeSet::new();
        for name in schema
            .inputs
            .iter()
            .map(|p| &p.name)
            .chain(schema.params.iter().map(|p| &p.name))
        {
            assert!(inputs.insert(name), "{t}: '{name}' is declared twice");
        }
        let mut outputs = BTreeSet::new();
        for port in &schema.outputs {
            assert!(
                outputs.insert(&port.name),
                "{t}: output '{}' twice",
                port.name
            );
            assert!(!port.doc.is_empty(), "{t}.{} has no doc", port.name);
        }
        for port in &schema.inputs {
            assert!(!port.doc.is_empty(), "{t}.{} has no doc", port.name);
        }
        for param in &schema.params {
            assert!(!param.doc.is_empty(), "{t}.{} has no doc", param.name);
        }
    }
}
