//! Reading a git config file the way git does, to name the keys whose value makes git run
//! a command. The parser follows git's own (`config.c`: `git_parse_source`, `get_base_var`,
//! `get_value`, `parse_value`) byte for byte, so a file cannot hide a key from it with
//! syntax git accepts; a file git would refuse is reported as unparsable.

/// One `section[.subsection].key [= value]` line. Section and key are lower-cased, the
/// subsection is kept as written (as git does for `[section "sub"]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    pub section: String,
    pub subsection: Option<String>,
    pub key: String,
    /// `None` for a bare `key` line (git reads it as boolean true).
    pub value: Option<Vec<u8>>,
}

impl Entry {
    /// The name git prints for it: `filter.lfs.clean`.
    pub fn name(&self) -> String {
        match &self.subsection {
            Some(sub) => format!("{}.{}.{}", self.section, sub, self.key),
            None => format!("{}.{}", self.section, self.key),
        }
    }
}

/// Which subsection a table row matches.
#[derive(Clone, Copy)]
enum Sub {
    /// `section.key` only.
    No,
    /// `section.<anything>.key` only.
    Any,
    /// Both.
    Either,
}

/// When a matching key is reported.
#[derive(Clone, Copy)]
enum When {
    Always,
    /// The value is a command unless it is a boolean (`core.fsmonitor=true` is git's own
    /// daemon; `pager.log=false` turns the pager off).
    NotBool,
    /// Only values starting with `!`, which git runs through the shell.
    Bang,
    /// Only an absolute path, which git runs as a program (`sendemail.smtpServer`).
    AbsolutePath,
}

/// Config keys whose value git runs as a command or that steer git into running or writing
/// something the owner did not choose (git-config(1), gitattributes(5), githooks(5)).
/// `*` as key matches any key. Each row: section, subsection, key, when, why.
const COMMAND_KEYS: &[(&str, Sub, &str, When, &str)] = &[
    (
        "core",
        Sub::No,
        "fsmonitor",
        When::NotBool,
        "a hook run by every `git status`",
    ),
    (
        "core",
        Sub::No,
        "hookspath",
        When::Always,
        "hooks run from anywhere",
    ),
    (
        "core",
        Sub::No,
        "sshcommand",
        When::Always,
        "run for ssh remotes",
    ),
    (
        "core",
        Sub::No,
        "pager",
        When::Always,
        "run for paged output",
    ),
    (
        "core",
        Sub::No,
        "editor",
        When::Always,
        "run for commit messages",
    ),
    (
        "core",
        Sub::No,
        "askpass",
        When::Always,
        "run for credentials",
    ),
    (
        "core",
        Sub::No,
        "gitproxy",
        When::Always,
        "run for git:// remotes",
    ),
    (
        "core",
        Sub::No,
        "alternaterefscommand",
        When::Always,
        "run on fetch and push",
    ),
    (
        "core",
        Sub::No,
        "worktree",
        When::Always,
        "checkout writes files there",
    ),
    (
        "sequence",
        Sub::No,
        "editor",
        When::Always,
        "run by rebase -i",
    ),
    (
        "interactive",
        Sub::No,
        "difffilter",
        When::Always,
        "run by add -p",
    ),
    ("pager", Sub::No, "*", When::NotBool, "a per-command pager"),
    ("alias", Sub::Either, "*", When::Bang, "a shell alias"),
    (
        "diff",
        Sub::No,
        "external",
        When::Always,
        "run by every diff",
    ),
    (
        "diff",
        Sub::Any,
        "textconv",
        When::Always,
        "run by diff and blame",
    ),
    ("diff", Sub::Any, "command", When::Always, "a diff driver"),
    ("difftool", Sub::Any, "cmd", When::Always, "run by difftool"),
    (
        "difftool",
        Sub::Any,
        "path",
        When::Always,
        "run by difftool",
    ),
    (
        "mergetool",
        Sub::Any,
        "cmd",
        When::Always,
        "run by mergetool",
    ),
    (
        "mergetool",
        Sub::Any,
        "path",
        When::Always,
        "run by mergetool",
    ),
    ("merge", Sub::Any, "driver", When::Always, "a merge driver"),
    (
        "filter",
        Sub::Any,
        "clean",
        When::Always,
        "run by add and status",
    ),
    (
        "filter",
        Sub::Any,
        "smudge",
        When::Always,
        "run by checkout",
    ),
    (
        "filter",
        Sub::Any,
        "process",
        When::Always,
        "run by add, status, checkout",
    ),
    (
        "credential",
        Sub::Either,
        "helper",
        When::Always,
        "run for credentials",
    ),
    (
        "gpg",
        Sub::Either,
        "program",
        When::Always,
        "run to sign and verify",
    ),
    (
        "gpg",
        Sub::Any,
        "defaultkeycommand",
        When::Always,
        "run to sign",
    ),
    (
        "include",
        Sub::No,
        "path",
        When::Always,
        "pulls in another config file",
    ),
    (
        "includeif",
        Sub::Any,
        "path",
        When::Always,
        "pulls in another config file",
    ),
    (
        "uploadpack",
        Sub::No,
        "packobjectshook",
        When::Always,
        "run by upload-pack",
    ),
    (
        "remote",
        Sub::Any,
        "uploadpack",
        When::Always,
        "run on fetch",
    ),
    (
        "remote",
        Sub::Any,
        "receivepack",
        When::Always,
        "run on push",
    ),
    (
        "remote",
        Sub::Any,
        "vcs",
        When::Always,
        "runs git-remote-<vcs>",
    ),
    (
        "protocol",
        Sub::Either,
        "allow",
        When::Always,
        "can allow ext::, which runs a command",
    ),
    (
        "submodule",
        Sub::Any,
        "update",
        When::Bang,
        "run by submodule update",
    ),
    ("tar", Sub::Any, "command", When::Always, "run by archive"),
    (
        "sendemail",
        Sub::Either,
        "smtpserver",
        When::AbsolutePath,
        "run by send-email",
    ),
    (
        "sendemail",
        Sub::Either,
        "tocmd",
        When::Always,
        "run by send-email",
    ),
    (
        "sendemail",
        Sub::Either,
        "cccmd",
        When::Always,
        "run by send-email",
    ),
    (
        "sendemail",
        Sub::Either,
        "headercmd",
        When::Always,
        "run by send-email",
    ),
    ("imap", Sub::No, "tunnel", When::Always, "run by imap-send"),
    (
        "browser",
        Sub::Any,
        "cmd",
        When::Always,
        "run by help and instaweb",
    ),
    (
        "browser",
        Sub::Any,
        "path",
        When::Always,
        "run by help and instaweb",
    ),
    ("man", Sub::Any, "cmd", When::Always, "run by help"),
    ("man", Sub::Any, "path", When::Always, "run by help"),
    ("guitool", Sub::Any, "cmd", When::Always, "run by git gui"),
    (
        "trailer",
        Sub::Any,
        "command",
        When::Always,
        "run by interpret-trailers",
    ),
    (
        "trailer",
        Sub::Any,
        "cmd",
        When::Always,
        "run by interpret-trailers",
    ),
    (
        "hook",
        Sub::Any,
        "command",
        When::Always,
        "a hook defined in config",
    ),
    (
        "init",
        Sub::No,
        "templatedir",
        When::Always,
        "copies hooks into new repositories",
    ),
];

fn is_bool(value: Option<&[u8]>) -> bool {
    let Some(v) = value else { return true };
    let v = String::from_utf8_lossy(v).to_ascii_lowercase();
    matches!(
        v.trim(),
        "" | "true" | "false" | "yes" | "no" | "on" | "off" | "1" | "0"
    )
}

/// Whether git would run a command (or go somewhere the owner did not choose) because of
/// this entry; the reason when it would.
pub(super) fn runs_code(e: &Entry) -> Option<&'static str> {
    COMMAND_KEYS
        .iter()
        .find_map(|(section, sub, key, when, why)| {
            let sub_ok = match sub {
                Sub::No => e.subsection.is_none(),
                Sub::Any => e.subsection.is_some(),
                Sub::Either => true,
            };
            let matches = e.section == *section && sub_ok && (*key == "*" || e.key == *key) && {
                let v = e.value.as_deref();
                match when {
                    When::Always => true,
                    When::NotBool => !is_bool(v),
                    When::Bang => v.is_some_and(|v| v.trim_ascii_start().starts_with(b"!")),
                    When::AbsolutePath => v.is_some_and(|v| v.starts_with(b"/")),
                }
            };
            matches.then_some(*why)
        })
}

/// git's `isspace` (sane_ctype): space, tab, LF, CR; not VT or FF.
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

fn is_key_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-'
}

struct Source<'a> {
    bytes: &'a [u8],
    pos: usize,
    line: usize,
    eof: bool,
}

impl Source<'_> {
    /// git's `get_next_char`: CRLF reads as LF, the end of the file as a final LF.
    fn next(&mut self) -> u8 {
        let Some(&c) = self.bytes.get(self.pos) else {
            self.eof = true;
            return b'\n';
        };
        self.pos += 1;
        let c = if c == b'\r' && self.bytes.get(self.pos) == Some(&b'\n') {
            self.pos += 1;
            b'\n'
        } else {
            c
        };
        if c == b'\n' {
            self.line += 1;
        }
        c
    }

    /// `[section]`, `[section.sub]` (legacy, lower-cased) or `[section "sub"]`, after `[`.
    fn section(&mut self) -> Option<(String, Option<String>)> {
        let mut name = Vec::new();
        loop {
            let c = self.next();
            if self.eof {
                return None;
            }
            if c == b']' {
                break;
            }
            if is_space(c) {
                let sub = self.extended_section(c)?;
                return finish_section(&name, Some(sub));
            }
            if !is_key_char(c) && c != b'.' {
                return None;
            }
            name.push(c.to_ascii_lowercase());
        }
        finish_section(&name, None)
    }

    fn extended_section(&mut self, mut c: u8) -> Option<Vec<u8>> {
        loop {
            if c == b'\n' {
                return None;
            }
            c = self.next();
            if !is_space(c) {
                break;
            }
        }
        if c != b'"' {
            return None;
        }
        let mut sub = Vec::new();
        loop {
            let mut c = self.next();
            if c == b'\n' {
                return None;
            }
            if c == b'"' {
                break;
            }
            if c == b'\\' {
                c = self.next();
                if c == b'\n' {
                    return None;
                }
            }
            sub.push(c);
        }
        (self.next() == b']').then_some(sub)
    }

    /// git's `parse_value`, after the `=`.
    fn value(&mut self) -> Option<Vec<u8>> {
        let mut value = Vec::new();
        let (mut quote, mut comment) = (false, false);
        let mut trim_len = 0usize;
        loop {
            let mut c = self.next();
            if c == b'\n' {
                if quote {
                    return None;
                }
                if trim_len > 0 {
                    value.truncate(trim_len);
                }
                return Some(value);
            }
            if comment {
                continue;
            }
            if is_space(c) && !quote {
                if trim_len == 0 {
                    trim_len = value.len();
                }
                if !value.is_empty() {
                    value.push(c);
                }
                continue;
            }
            if !quote && (c == b';' || c == b'#') {
                comment = true;
                continue;
            }
            trim_len = 0;
            if c == b'\\' {
                c = match self.next() {
                    b'\n' => continue,
                    b't' => b'\t',
                    b'b' => 8,
                    b'n' => b'\n',
                    c @ (b'\\' | b'"') => c,
                    _ => return None,
                };
                value.push(c);
                continue;
            }
            if c == b'"' {
                quote = !quote;
                continue;
            }
            value.push(c);
        }
    }
}

/// Splits a section name as git's `parse_config_key` does: up to the first dot is the
/// section, the rest (legacy `[a.b]`) the subsection.
fn finish_section(name: &[u8], sub: Option<Vec<u8>>) -> Option<(String, Option<String>)> {
    if name.is_empty() {
        return None;
    }
    let name = String::from_utf8_lossy(name).into_owned();
    let (section, legacy) = match name.split_once('.') {
        Some((s, rest)) => (s.to_string(), Some(rest.to_string())),
        None => (name, None),
    };
    let sub = match (legacy, sub) {
        (Some(l), Some(s)) => Some(format!("{l}.{}", String::from_utf8_lossy(&s))),
        (Some(l), None) => Some(l),
        (None, Some(s)) => Some(String::from_utf8_lossy(&s).into_owned()),
        (None, None) => None,
    };
    Some((section, sub))
}

/// Every entry of a config file, or the line git would stop at.
pub(super) fn parse(bytes: &[u8]) -> Result<Vec<Entry>, usize> {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let mut src = Source {
        bytes,
        pos: 0,
        line: 1,
        eof: false,
    };
    let mut entries = Vec::new();
    let mut section: Option<(String, Option<String>)> = None;
    let mut comment = false;
    loop {
        let c = src.next();
        if c == b'\n' {
            if src.eof {
                return Ok(entries);
            }
            comment = false;
            continue;
        }
        if comment || is_space(c) {
            continue;
        }
        if c == b'#' || c == b';' {
            comment = true;
            continue;
        }
        if c == b'[' {
            let line = src.line;
            section = Some(src.section().ok_or(line)?);
            continue;
        }
        if !c.is_ascii_alphabetic() {
            return Err(src.line);
        }
        let line = src.line;
        let Some((sec, sub)) = section.clone() else {
            return Err(line);
        };
        let mut key = vec![c.to_ascii_lowercase()];
        let mut c;
        loop {
            c = src.next();
            if src.eof || !is_key_char(c) {
                break;
            }
            key.push(c.to_ascii_lowercase());
        }
        while c == b' ' || c == b'\t' {
            c = src.next();
        }
        let value = if c == b'\n' {
            None
        } else if c == b'=' {
            Some(src.value().ok_or(line)?)
        } else {
            return Err(line);
        };
        entries.push(Entry {
            section: sec,
            subsection: sub,
            key: String::from_utf8_lossy(&key).into_owned(),
            value,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(text: &str) -> Vec<String> {
        parse(text.as_bytes())
            .unwrap()
            .iter()
            .filter(|e| runs_code(e).is_some())
            .map(Entry::name)
            .collect()
    }

    #[test]
    fn command_keys_are_found_in_every_spelling_git_accepts() {
        let text = "\u{feff}[core]\n\trepositoryformatversion = 0\n\tFSMonitor = ./x\n\
                    [Filter \"Lfs\"] clean = a ; comment\n\
                    [diff.pdf]\ntextconv=b\n\
                    [alias]\n\tst = status\n\tx = \"!sh -c 'id'\"\n\
                    [core]editor=vi\n\
                    [core]\n\tpager = less \\\n  -R\n\
                    [include]\npath\n";
        assert_eq!(
            names(text),
            [
                "core.fsmonitor",
                "filter.Lfs.clean",
                "diff.pdf.textconv",
                "alias.x",
                "core.editor",
                "core.pager",
                "include.path"
            ]
        );
    }

    #[test]
    fn a_continued_value_hides_no_key_and_booleans_are_not_commands() {
        let text = "[core]\n\teditor = a \\\nfsmonitor = b\n\tfsmonitor = true\n[pager]\n\tlog = false\n\tdiff = delta\n";
        let entries = parse(text.as_bytes()).unwrap();
        assert_eq!(entries[0].value.as_deref(), Some(&b"a fsmonitor = b"[..]));
        assert_eq!(names(text), ["core.editor", "pager.diff"]);
    }

    #[test]
    fn a_file_git_refuses_is_refused_with_its_line() {
        assert_eq!(parse(b"[core]\n\tx = \"open\n"), Err(2));
        assert_eq!(parse(b"key = 1\n"), Err(1));
        assert_eq!(parse(b"[core\n"), Err(1));
        assert_eq!(parse(b"[core]\n\tx = a\\q\n"), Err(2));
    }
}
