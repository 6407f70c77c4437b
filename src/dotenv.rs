//! Loading `.env` (from the working directory or the nearest parent that has one, as
//! dotenvy finds it) without ever showing a value. dotenvy's own parse errors print the
//! line, or for an unterminated quote the rest of the file, secrets and all, and never
//! name the variable; these name the file, the line and the variable only.

use std::path::{Path, PathBuf};

/// Lines past this are not searched for the line number of an error.
const MAX_LOCATED_LINES: usize = 20_000;

#[derive(Debug, thiserror::Error)]
pub enum DotenvError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: it is not UTF-8 text")]
    NotUtf8 { path: PathBuf },
    #[error("{path}{where_}: {what}; the value is not shown", where_ = line_part(*.line))]
    Line {
        path: PathBuf,
        /// 1-based; `None` when it could not be told.
        line: Option<usize>,
        what: String,
    },
}

fn line_part(line: Option<usize>) -> String {
    line.map(|n| format!(" line {n}")).unwrap_or_default()
}

/// Loads the `.env` found from the working directory up, if any, without replacing
/// variables the environment already sets. Returns the file it loaded.
pub fn load() -> Result<Option<PathBuf>, DotenvError> {
    let cwd = std::env::current_dir().map_err(|source| DotenvError::Io {
        path: PathBuf::from("."),
        source,
    })?;
    let Some(path) = find(&cwd)? else {
        return Ok(None);
    };
    load_file(&path)?;
    Ok(Some(path))
}

/// Checks the whole file first, so that a bad line sets nothing and shows nothing.
pub fn load_file(path: &Path) -> Result<(), DotenvError> {
    let io = |source| DotenvError::Io {
        path: path.to_owned(),
        source,
    };
    let bytes = std::fs::read(path).map_err(io)?;
    let text = String::from_utf8(bytes).map_err(|_| DotenvError::NotUtf8 {
        path: path.to_owned(),
    })?;
    if let Some((line, what)) = first_error(&text) {
        return Err(DotenvError::Line {
            path: path.to_owned(),
            line,
            what,
        });
    }
    match dotenvy::from_path(path) {
        Ok(()) => Ok(()),
        Err(dotenvy::Error::Io(e)) => Err(io(e)),
        // The file changed between the check and the load: report it, value-free.
        Err(_) => Err(DotenvError::Line {
            path: path.to_owned(),
            line: None,
            what: "it changed while it was read".into(),
        }),
    }
}

fn find(dir: &Path) -> Result<Option<PathBuf>, DotenvError> {
    for d in dir.ancestors() {
        let candidate = d.join(".env");
        match std::fs::metadata(&candidate) {
            Ok(m) if m.is_file() => return Ok(Some(candidate)),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(DotenvError::Io {
                    path: candidate,
                    source,
                });
            }
        }
    }
    Ok(None)
}

/// Parses `text` as dotenvy does; returns the first bad line's number and what is wrong
/// with it, naming the variable but never its value.
pub fn first_error(text: &str) -> Option<(Option<usize>, String)> {
    let good = match count_until_error(text) {
        (_, false) => return None,
        (good, true) => good,
    };
    // The bad entry starts on the first line at which the text up to it fails after
    // exactly as many good entries as the whole text does. (An earlier line that opens
    // a quoted value over several lines fails with fewer.)
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut prefix = String::with_capacity(text.len());
    let mut found = None;
    for (i, line) in lines.iter().take(MAX_LOCATED_LINES).enumerate() {
        prefix.push_str(line);
        if count_until_error(&prefix) == (good, true) {
            found = Some(i);
            break;
        }
    }
    let what = match found.and_then(|i| variable(lines[i])) {
        Some(name) => format!(
            "the value of {name} cannot be read (quote a value that holds spaces or #, close every quote, and escape only \\\\ \\' \\\" \\$ and \\n)"
        ),
        None => "it is not a NAME=value line".to_owned(),
    };
    Some((found.map(|i| i + 1), what))
}

/// How many entries parse before the first error, and whether there is one.
fn count_until_error(text: &str) -> (usize, bool) {
    let mut good = 0;
    for item in dotenvy::from_read_iter(text.as_bytes()) {
        match item {
            Ok(_) => good += 1,
            Err(_) => return (good, true),
        }
    }
    (good, false)
}

/// The variable a line sets: `NAME=…` or `export NAME=…`. Anything else (a bare
/// secret pasted on its own line) names nothing, so nothing of it is shown.
fn variable(line: &str) -> Option<&str> {
    let l = line.trim_start();
    let l = l.strip_prefix("export ").map(str::trim_start).unwrap_or(l);
    let end = l
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .unwrap_or(l.len());
    let (name, rest) = l.split_at(end);
    let starts_well = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    (starts_well && rest.trim_start().starts_with('=')).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MNEMONIC: &str =
        "legal winner thank year wave sausage worth useful legal winner thank yellow";

    fn error_of(text: &str) -> (Option<usize>, String) {
        first_error(text).unwrap_or_else(|| panic!("no error in {text:?}"))
    }

    #[test]
    fn good_files_have_no_error() {
        for text in [
            "",
            "# only a comment\n",
            "A=1\nB='two words'\nexport C=\"x\\ny\"\n",
            "M=\"line one\nline two\"\nN=2\n",
        ] {
            assert_eq!(first_error(text), None, "{text:?}");
        }
    }

    #[test]
    fn errors_name_the_variable_and_line_never_the_value() {
        let cases = [
            (format!("A=1\nSM_KEY={MNEMONIC}\nB=2\n"), 2, "SM_KEY"),
            (
                "A=1\n\n# c\nPASSWORD=\"pw\\qSecret\"\n".into(),
                4,
                "PASSWORD",
            ),
            (
                "A=1\nTURN_CREDENTIAL=\"turnSecret\nB=2\nC=3\n".into(),
                2,
                "TURN_CREDENTIAL",
            ),
            (
                "M=\"multi\nline\"\nexport PASSWORD='unterminated Secret\n".into(),
                3,
                "PASSWORD",
            ),
        ];
        for (text, line, var) in cases {
            let (at, what) = error_of(&text);
            assert_eq!(at, Some(line), "{text:?}: {what}");
            assert!(what.contains(var), "{what}");
            for secret in ["Secret", "winner", "pw"] {
                assert!(!what.contains(secret), "{what}");
            }
        }
    }

    #[test]
    fn a_bare_secret_line_names_nothing() {
        let (at, what) = error_of(&format!("A=1\n{MNEMONIC}\n"));
        assert_eq!(at, Some(2));
        assert_eq!(what, "it is not a NAME=value line");
    }
}
