use crate::Spec;

/// Keeps or drops the lines between `#if FLAG` (or `#if !FLAG`), `#else` and `#endif`, which
/// may nest. Every flag named must be in `spec`, so a typo is an error rather than a silently
/// dropped branch. Dropped lines become empty lines so that line numbers in naga's errors still
/// point into the file.
pub fn preprocess(src: &str, spec: &Spec) -> Result<String, String> {
    // For each open #if: (whether its current branch is kept, whether the enclosing one is).
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let mut out = String::with_capacity(src.len());
    for (i, line) in src.lines().enumerate() {
        let t = line.trim();
        let active = stack.last().is_none_or(|&(keep, outer)| keep && outer);
        if let Some(cond) = t.strip_prefix("#if ") {
            let (neg, name) = match cond.trim().strip_prefix('!') {
                Some(n) => (true, n.trim()),
                None => (false, cond.trim()),
            };
            let v = spec.flag_value(name).ok_or_else(|| format!("line {}: unknown flag {name}", i + 1))?;
            stack.push((v != neg, active));
        } else if t == "#else" {
            let top = stack.last_mut().ok_or_else(|| format!("line {}: #else without #if", i + 1))?;
            top.0 = !top.0;
        } else if t == "#endif" {
            stack.pop().ok_or_else(|| format!("line {}: #endif without #if", i + 1))?;
        } else if active {
            out.push_str(line);
        }
        out.push('\n');
    }
    if !stack.is_empty() {
        return Err("#if without #endif".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_branch_of_each_flag() {
        let spec = Spec::new().flag("A", true).flag("B", false);
        let src = "x\n#if A\na\n#if B\nb\n#else\nnb\n#endif\n#else\nna\n#endif\n#if !B\nc\n#endif\n";
        let out = preprocess(src, &spec).unwrap();
        let kept: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(kept, ["x", "a", "nb", "c"]);
        assert_eq!(out.lines().count(), src.lines().count());
    }

    #[test]
    fn rejects_unknown_flags_and_unbalanced_blocks() {
        let spec = Spec::new().flag("A", true);
        assert!(preprocess("#if Z\n#endif\n", &spec).unwrap_err().contains("unknown flag Z"));
        assert!(preprocess("#if A\n", &spec).is_err());
        assert!(preprocess("#endif\n", &spec).is_err());
        assert!(preprocess("#else\n", &spec).is_err());
    }
}
