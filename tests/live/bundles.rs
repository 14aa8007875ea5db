//! Bundles: a kept bundle is readable by other runtimes and valid against the runtime
//! spec, and an edited, foreign or swapped one is refused before anything runs.

use crate::scene::{busybox_image, code, read_json, stderr, stdout, Scene};
use covenant_test_support::cannot_run;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

#[test]
fn keep_bundle_leaves_a_bundle_another_runtime_can_read() {
    let Some(s) = Scene::live() else { return };
    let dir = s.home.path().join("kept");
    let out = s.run(&["--keep-bundle", dir.to_str().unwrap()], &["true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let config: serde_json::Value = read_json(&dir.join("config.json"));
    assert_eq!(config["process"]["args"][0], "true");
    assert_eq!(config["process"]["noNewPrivileges"], true);
    assert!(config["annotations"]["org.opencovenant.landlock"].is_string());
    assert!(dir.join("rootfs/usr").is_dir());
    let plan = s
        .ctl()
        .args(["plan", "--memory", "1GiB", "--", "true"])
        .output()
        .unwrap();
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(plan["plan"]["limits"]["memory_bytes"], 1u64 << 30);
    assert_eq!(
        plan["config"]["linux"]["resources"]["memory"]["limit"],
        1u64 << 30
    );
}

#[test]
fn a_kept_bundles_paths_are_checked_again_when_it_runs() {
    let Some(s) = Scene::live() else { return };
    let base = s.home.path();
    let secret = base.join("secret");
    std::fs::create_dir(&secret).unwrap();
    std::fs::write(secret.join("key"), "root's").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o700)).unwrap();
    let shared = base.join("shared");
    std::fs::create_dir(&shared).unwrap();
    for (i, swap) in ["symlink", "directory"].into_iter().enumerate() {
        let bundle = base.join(format!("bundle-{i}"));
        let out = s
            .ctl()
            .arg("bundle")
            .arg("--read")
            .arg(&shared)
            .arg("--out")
            .arg(&bundle)
            .args(["--", "cat", &format!("{}/key", shared.display())])
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let old = base.join(format!("shared-{i}"));
        std::fs::rename(&shared, &old).unwrap();
        match swap {
            "symlink" => std::os::unix::fs::symlink(&secret, &shared).unwrap(),
            _ => {
                std::fs::create_dir(&shared).unwrap();
                std::fs::write(shared.join("key"), "another's").unwrap();
            }
        }
        let out = s
            .ctl()
            .args(["run", "--bundle"])
            .arg(&bundle)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(code(&out), 125, "{swap}: {}{}", stdout(&out), stderr(&out));
        let expected = if swap == "symlink" {
            "symlink"
        } else {
            "replaced"
        };
        assert!(stderr(&out).contains(expected), "{swap}: {}", stderr(&out));
        assert!(!stdout(&out).contains("root's") && !stdout(&out).contains("another's"));
        std::fs::remove_file(&shared)
            .or_else(|_| std::fs::remove_dir_all(&shared))
            .unwrap();
        std::fs::rename(&old, &shared).unwrap();
    }
}

/// `covenant-ctl bundle --out DIR` with the scene's workspace, for `argv`.
fn write_bundle(s: &Scene, dir: &Path, argv: &[&str]) {
    let out = s
        .ctl()
        .args(["bundle", "--workspace"])
        .arg(&s.workspace)
        .arg("--out")
        .arg(dir)
        .arg("--")
        .args(argv)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = read_json(path);
    edit(&mut v);
    std::fs::write(path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

#[test]
fn an_edited_or_foreign_bundle_is_refused_and_nothing_runs() {
    let Some(s) = Scene::live() else { return };
    let marker = s.workspace.join("marker");
    let argv = ["sh", "-c", "touch /workspace/marker"];
    let run_bundle = |dir: &Path| {
        s.ctl()
            .args(["run", "--bundle"])
            .arg(dir)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    // The bundle as written runs.
    let good = s.home.path().join("good");
    write_bundle(&s, &good, &argv);
    let out = run_bundle(&good);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(marker.exists(), "the untouched bundle did not run");
    std::fs::remove_file(&marker).unwrap();

    type Edit = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "container root mapped to host root",
            Box::new(|d: &Path| {
                edit_json(&d.join("config.json"), |c| {
                    c["linux"]["uidMappings"][0]["hostID"] = 0.into();
                    c["linux"]["gidMappings"][0]["hostID"] = 0.into();
                })
            }),
            "`/linux/gidMappings/0/hostID`",
        ),
        (
            "an extra read-write bind of host /",
            Box::new(|d: &Path| {
                edit_json(&d.join("config.json"), |c| {
                    let mounts = c["mounts"].as_array_mut().unwrap();
                    mounts.push(serde_json::json!({"destination": "/host", "type": "bind",
                        "source": "/", "options": ["rbind", "rw"]}));
                })
            }),
            "`/mounts/",
        ),
        (
            "a widened landlock ruleset",
            Box::new(|d: &Path| {
                edit_json(&d.join("config.json"), |c| {
                    let key = "org.opencovenant.landlock";
                    let mut rules: serde_json::Value =
                        serde_json::from_str(c["annotations"][key].as_str().unwrap()).unwrap();
                    let mut all = rules["fs"][0].clone();
                    all["path"] = "/".into();
                    all["access"] = "read-write".into();
                    rules["fs"].as_array_mut().unwrap().push(all);
                    c["annotations"][key] = rules.to_string().into();
                })
            }),
            "`/annotations/org.opencovenant.landlock`",
        ),
        (
            "an edited plan with its digest rewritten",
            Box::new(|d: &Path| {
                edit_json(&d.join("plan.json"), |p| {
                    p["argv"] =
                        serde_json::json!(["sh", "-c", "touch /workspace/marker; cat /etc/shadow"]);
                });
                let plan = std::fs::read(d.join("plan.json")).unwrap();
                let digest = format!("sha256:{}", sha256_hex(&plan));
                edit_json(&d.join("config.json"), |c| {
                    c["annotations"]["org.opencovenant.plan-digest"] = digest.into();
                });
            }),
            "`/plan_digest` of signature.json",
        ),
        (
            "a bundle signed by a key this home does not trust",
            Box::new(|d: &Path| {
                // Rewritten and signed in another home, then put in place of this one.
                let other = tempfile::tempdir().unwrap();
                let foreign = other.path().join("b");
                let out = Command::new(env!("CARGO_BIN_EXE_covenant-ctl"))
                    .env("COVENANT_HOME", other.path().join("home"))
                    .args(["bundle", "--workspace"])
                    .arg(d.parent().unwrap().join("ws"))
                    .arg("--out")
                    .arg(&foreign)
                    .args(["--", "sh", "-c", "touch /workspace/marker"])
                    .output()
                    .unwrap();
                assert_eq!(code(&out), 0, "{}", stderr(&out));
                std::fs::copy(foreign.join("signature.json"), d.join("signature.json")).unwrap();
            }),
            "is not a key of this home",
        ),
    ];
    for (i, (what, edit, named)) in cases.iter().enumerate() {
        let dir = s.home.path().join(format!("edited-{i}"));
        write_bundle(&s, &dir, &argv);
        edit(&dir);
        let out = run_bundle(&dir);
        assert_eq!(code(&out), 125, "{what}: {}", stderr(&out));
        assert!(stderr(&out).contains(named), "{what}: {}", stderr(&out));
        assert!(!marker.exists(), "{what}: the refused bundle ran");
    }
    // The refusals are audited.
    let tail = s.audit_tail(200);
    assert_eq!(
        tail.matches("bundle.refused").count(),
        cases.len(),
        "{tail}"
    );
}

/// Hex sha256 of `bytes`, by `sha256sum`.
fn sha256_hex(bytes: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    stdout(&out).split_whitespace().next().unwrap().to_string()
}

#[test]
fn every_bundle_validates_against_the_runtime_spec_schema() {
    let Some(s) = Scene::live() else { return };
    let schema = Path::new(
        "/usr/share/gocode/src/github.com/opencontainers/runtime-spec/schema/config-schema.json",
    );
    if !schema.exists() {
        cannot_run("the runtime-spec schema is missing (install golang-github-opencontainers-specs-dev python3-jsonschema)");
        return;
    }
    let validator = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/live/validate_config.py");
    let validate = |config: &Path| {
        Command::new("/usr/bin/python3")
            .arg("-W")
            .arg("ignore")
            .arg(&validator)
            .arg(config)
            .output()
            .unwrap()
    };
    let image = busybox_image(&s);
    let mut requests: Vec<Vec<String>> = vec![
        vec!["--".into(), "true".into()],
        vec![
            "--workspace".into(),
            s.workspace.display().to_string(),
            "--memory".into(),
            "64MiB".into(),
            "--pids".into(),
            "9".into(),
            "--cpus".into(),
            "0.5".into(),
            "--timeout".into(),
            "5s".into(),
            "--".into(),
            "true".into(),
        ],
        vec![
            "--net".into(),
            "host".into(),
            "--connect".into(),
            "443".into(),
            "--syscalls".into(),
            "ptrace".into(),
            "--user".into(),
            "1000:1000".into(),
            "--".into(),
            "true".into(),
        ],
    ];
    if image.is_some() {
        requests.push(vec![
            "--rootfs".into(),
            "image:busy:1".into(),
            "--".into(),
            "sh".into(),
        ]);
    }
    for (i, request) in requests.iter().enumerate() {
        let dir = s.home.path().join(format!("bundle-{i}"));
        let out = s
            .ctl()
            .args(["bundle", "--out"])
            .arg(&dir)
            .args(request)
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let v = validate(&dir.join("config.json"));
        assert!(
            v.status.success(),
            "bundle {i} is not valid:\n{}{}",
            stdout(&v),
            stderr(&v)
        );
    }
    // The check is real: a config that breaks the schema fails it.
    let broken = s.home.path().join("broken.json");
    let mut config: serde_json::Value = read_json(&s.home.path().join("bundle-0/config.json"));
    config["ociVersion"] = serde_json::json!(5);
    std::fs::write(&broken, serde_json::to_vec(&config).unwrap()).unwrap();
    assert!(!validate(&broken).status.success());
}
