//! [`Setting`]: one environment variable a plugin reads, as it declares it (ABI 1.6), so
//! that the daemon's `--help` and `--check` list every setting in force, the plugins' too.

use crate::abi::{RawBytes, RawSetting};

/// One setting a plugin reads: `SWITCHYARD_<PLUGIN>_<WHAT>`, what applies when it is not
/// set, and what it does. Listed in [`Protocol::SETTINGS`](crate::Protocol::SETTINGS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setting {
    /// The environment variable.
    pub name: &'static str,
    /// The value or behaviour when unset (`"5000"`, `"every path is echo"`); may be empty.
    pub default: &'static str,
    /// One line: what it does.
    pub help: &'static str,
}

impl Setting {
    /// A setting for a plugin's `SETTINGS` table.
    pub const fn new(name: &'static str, default: &'static str, help: &'static str) -> Setting {
        Setting {
            name,
            default,
            help,
        }
    }

    /// Its ABI form, pointing at the same static text.
    pub(crate) fn to_raw(self) -> RawSetting {
        RawSetting {
            name: RawBytes::new(self.name.as_bytes()),
            default: RawBytes::new(self.default.as_bytes()),
            help: RawBytes::new(self.help.as_bytes()),
        }
    }
}

/// Every name `read` looks up through the lookup it is lent (which answers "not set"),
/// sorted: what a plugin's settings parser reads.
pub fn names_read(read: impl FnOnce(&dyn Fn(&str) -> Option<String>)) -> Vec<String> {
    let seen = std::cell::RefCell::new(Vec::<String>::new());
    read(&|name: &str| {
        seen.borrow_mut().push(name.to_string());
        None
    });
    let mut names = seen.into_inner();
    names.sort();
    names.dedup();
    names
}

/// The names of `declared`, sorted, to compare with [`names_read`].
pub fn names(declared: &[Setting]) -> Vec<String> {
    let mut names: Vec<String> = declared.iter().map(|s| s.name.to_string()).collect();
    names.sort();
    names
}

/// For a plugin's unit test: panics, naming them, unless `read` (its settings parser, lent
/// a lookup) reads exactly the settings `declared` lists: one read and not declared would
/// be missing from `--help`, one declared and never read would be listed for nothing.
///
/// ```
/// use protocol_api::Setting;
/// const SETTINGS: &[Setting] = &[Setting::new("SWITCHYARD_MINE_PORT", "80", "the port")];
/// fn parse(lookup: &dyn Fn(&str) -> Option<String>) -> u16 {
///     lookup("SWITCHYARD_MINE_PORT").map_or(80, |v| v.parse().unwrap_or(80))
/// }
/// protocol_api::setting::assert_reads_exactly(SETTINGS, |lookup| {
///     parse(lookup);
/// });
/// ```
pub fn assert_reads_exactly(
    declared: &[Setting],
    read: impl FnOnce(&dyn Fn(&str) -> Option<String>),
) {
    let (read, declared) = (names_read(read), names(declared));
    let undeclared: Vec<&String> = read.iter().filter(|n| !declared.contains(n)).collect();
    let unread: Vec<&String> = declared.iter().filter(|n| !read.contains(n)).collect();
    assert!(
        undeclared.is_empty() && unread.is_empty(),
        "settings read but not declared: {undeclared:?}; declared but not read: {unread:?}"
    );
}
