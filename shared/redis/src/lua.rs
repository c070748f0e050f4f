//! The one script registry: every Redis script Projector runs is built here, with each
//! `--- @include "<name>"` line replaced by `lua/lib/<name>.lua` (BullMQ's convention). A library
//! is included once per script whoever asks for it, so `slots` and a script may both include
//! `time`. Scripts are compiled into the binary; nothing is read from disk at run time.

use std::collections::HashSet;

use redis::Script;

/// `lua/lib/`: the helpers scripts share, by the name they are included by.
const LIB: &[(&str, &str)] = &[
    ("time", include_str!("../../../lua/lib/time.lua")),
    ("slots", include_str!("../../../lua/lib/slots.lua")),
    ("runs", include_str!("../../../lua/lib/runs.lua")),
];

const INCLUDE: &str = "--- @include \"";

/// The script as Redis runs it: `body` with its includes expanded. An unknown include becomes a
/// Lua `error(…)` naming it, so the script fails at its first call with the name, not later on a
/// missing helper (tests expand every file in `lua/`, so none ships).
pub fn source(body: &str) -> String {
    let mut out = String::with_capacity(body.len() * 2);
    expand(body, &mut HashSet::new(), &mut out);
    out
}

/// A script built from `body` (its includes expanded), hashed once for `EVALSHA`.
pub fn script(body: &str) -> Script {
    Script::new(&source(body))
}

fn expand<'a>(body: &'a str, included: &mut HashSet<&'a str>, out: &mut String) {
    for line in body.lines() {
        let name = line.strip_prefix(INCLUDE).and_then(|rest| rest.strip_suffix('"'));
        match name.map(|n| (n, LIB.iter().find(|(lib, _)| *lib == n))) {
            None => {
                out.push_str(line);
                out.push('\n');
            }
            Some((_, Some((lib, text)))) => {
                if included.insert(lib) {
                    expand(text, included, out);
                }
            }
            Some((unknown, None)) => {
                out.push_str(&format!("error('unknown --- @include \"{unknown}\": no lua/lib/{unknown}.lua')\n"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_include_is_expanded_once_and_an_unknown_one_fails_loudly() {
        let built = source("-- a script\n--- @include \"slots\"\n--- @include \"time\"\nreturn now_ms()\n");
        assert_eq!(built.matches("local function now_ms()").count(), 1, "time comes once, through slots: {built}");
        assert!(built.contains("local function effective("), "{built}");
        assert!(!built.lines().any(|l| l.starts_with(INCLUDE)), "{built}");
        assert!(source("--- @include \"nope\"\n").contains("error('unknown --- @include \"nope\""));
    }

    #[test]
    fn every_script_in_lua_expands_without_an_unknown_include() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../lua");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("lua/").flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "lua") {
                let built = source(&std::fs::read_to_string(&path).expect("readable"));
                assert!(!built.lines().any(|l| l.starts_with(INCLUDE)), "{}: {built}", path.display());
                assert!(!built.contains("error('unknown --- @include"), "{}: {built}", path.display());
                seen += 1;
            }
        }
        assert!(seen >= 20, "{seen} scripts");
    }
}
