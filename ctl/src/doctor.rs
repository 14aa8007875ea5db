//! `covenant-ctl doctor`: prints every host check; exit 0 when the native runner can run.

pub fn run() -> i32 {
    let checks = covenant_runners::doctor::run_checks();
    let mut fatal = false;
    for c in &checks {
        let mark = match (c.ok, c.required) {
            (true, _) => "ok  ",
            (false, true) => "FAIL",
            (false, false) => "warn",
        };
        println!("{mark}  {:<36} {}", c.name, c.detail);
        if let Some(fix) = &c.fix {
            println!("      fix: {fix}");
        }
        fatal |= !c.ok && c.required;
    }
    if fatal {
        println!("\nthe native runner cannot run here: fix the FAIL lines above");
        1
    } else {
        println!("\nthe native runner can run here");
        0
    }
}
