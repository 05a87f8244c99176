//! The files under deploy/ parse: YAML (Kubernetes, Compose) and JSON
//! (Grafana) through Python's parsers, the example config through dotgate's
//! own config-file reader, so an unknown key there fails here.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::{CommandFactory, Parser};

use crate::process::{missing_tool, run};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// Every YAML document under deploy/ parses, each Kubernetes manifest has a
/// kind, and the Grafana dashboard is JSON with panels. Ignored by plain
/// `cargo test`; fails where python3 or PyYAML is missing.
#[tokio::test]
#[ignore = "needs python3 with PyYAML (package python3-yaml); run with --include-ignored"]
async fn yaml_and_json_files_parse() {
    let has_yaml = Command::new("python3")
        .args(["-c", "import yaml"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_yaml {
        missing_tool("python3 with PyYAML", "python3-yaml");
    }
    let script = r#"
import glob, json, sys, yaml
d = sys.argv[1]
manifests = sorted(glob.glob(d + '/kubernetes/*.yaml'))
assert manifests, 'no Kubernetes manifests'
kinds = []
for f in manifests:
    for doc in yaml.safe_load_all(open(f)):
        assert doc and doc.get('kind') and doc.get('apiVersion'), f
        kinds.append(doc['kind'])
for k in ['Deployment', 'Service', 'PodDisruptionBudget', 'Secret']:
    assert k in kinds, 'missing ' + k
compose = yaml.safe_load(open(d + '/docker-compose.yml'))
assert set(compose['services']) >= {'dotgate', 'unbound'}, compose['services'].keys()
dash = json.load(open(d + '/grafana/dotgate.json'))
assert dash.get('panels'), 'dashboard without panels'
print('ok', len(kinds), 'manifests,', len(dash['panels']), 'panels')
"#;
    let mut command = Command::new("python3");
    command.args(["-c", script]).arg(deploy_dir());
    let out = run(command).await;
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The example config file names only real flags, with values of the right
/// shape, and its flags parse.
#[test]
fn example_config_uses_only_real_flags() {
    let path = deploy_dir().join("dotgate.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let cli = dotgate::config::cli::Cli::command();
    let serve = cli.find_subcommand("serve").unwrap();
    let args = dotgate::config::file::args_from_toml(&text, "dotgate.toml", serve, |_| false)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(args.len() >= 10, "{args:?}");
    let mut argv = vec!["dotgate".into(), "serve".into()];
    argv.extend(args);
    dotgate::config::cli::Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{e}"));
}
