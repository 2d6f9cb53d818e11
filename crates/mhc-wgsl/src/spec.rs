use std::fmt::Write;

/// The specialisation of a kernel: named `u32` constants and boolean flags. It is also the key
/// of the runtime's pipeline cache, so two equal specs always mean the same compiled code.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Spec {
    consts: Vec<(&'static str, u32)>,
    flags: Vec<(&'static str, bool)>,
}

impl Spec {
    /// An empty spec: no constants, no flags.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `const NAME: u32 = value;` (in place, where `name` is already set).
    pub fn with(mut self, name: &'static str, value: u32) -> Self {
        set(&mut self.consts, name, value);
        self
    }

    /// Sets a flag for `#if NAME`, also declared as `const NAME: bool` (in place, where `name`
    /// is already set).
    pub fn flag(mut self, name: &'static str, on: bool) -> Self {
        set(&mut self.flags, name, on);
        self
    }

    /// The value of constant `name`, if it was added.
    pub fn get(&self, name: &str) -> Option<u32> {
        self.consts.iter().find(|(n, _)| *n == name).map(|&(_, v)| v)
    }

    /// The value of flag `name`, if it was added.
    pub fn flag_value(&self, name: &str) -> Option<bool> {
        self.flags.iter().find(|(n, _)| *n == name).map(|&(_, v)| v)
    }

    pub(crate) fn const_decls(&self) -> String {
        let mut s = String::new();
        for (name, v) in &self.consts {
            writeln!(s, "const {name}: u32 = {v}u;").expect("writing to a String");
        }
        for (name, v) in &self.flags {
            writeln!(s, "const {name}: bool = {v};").expect("writing to a String");
        }
        s
    }
}

fn set<T>(entries: &mut Vec<(&'static str, T)>, name: &'static str, value: T) {
    match entries.iter_mut().find(|(n, _)| *n == name) {
        Some(e) => e.1 = value,
        None => entries.push((name, value)),
    }
}
