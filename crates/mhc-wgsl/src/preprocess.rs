use crate::Spec;

/// Resolves the two directives of mhc's WGSL:
/// - `#if FLAG` (or `#if !FLAG`), `#else`, `#endif`, which may nest: keeps or drops lines.
///   Every flag named must be in `spec`, so a typo is an error rather than a silently dropped
///   branch. Dropped lines become empty lines, so naga's line numbers still point into the file.
/// - `#unroll VAR COUNT` ... `#endunroll`: repeats the body COUNT times (a number or a constant
///   of `spec`, or `A>>B` of those) with `{VAR}` replaced by `0u`, `1u`, ... Loops over private arrays are written
///   this way because drivers do not always unroll them, and an array indexed by a loop counter
///   is then kept in (slow) memory instead of registers.
pub fn preprocess(src: &str, spec: &Spec) -> Result<String, String> {
    let kept = resolve_ifs(src, spec)?;
    let lines: Vec<&str> = kept.lines().collect();
    let mut out = String::with_capacity(kept.len());
    expand(&lines, spec, &mut out)?;
    Ok(out)
}

/// Appends `lines` to `out` with every `#unroll` block expanded, innermost blocks included.
fn expand(lines: &[&str], spec: &Spec, out: &mut String) -> Result<(), String> {
    let mut i = 0;
    while i < lines.len() {
        let t = lines[i].trim();
        let Some(args) = t.strip_prefix("#unroll ") else {
            if t == "#endunroll" {
                return Err(format!("#endunroll without #unroll: {t}"));
            }
            out.push_str(lines[i]);
            out.push('\n');
            i += 1;
            continue;
        };
        let mut words = args.split_whitespace();
        let (Some(var), Some(count), None) = (words.next(), words.next(), words.next()) else {
            return Err(format!("expected `#unroll VAR COUNT`, got `{t}`"));
        };
        let n = unroll_count(count, spec).ok_or_else(|| format!("#unroll: unknown count {count}"))?;
        // The matching #endunroll, counting nested blocks.
        let mut depth = 1;
        let mut end = i + 1;
        while end < lines.len() {
            let e = lines[end].trim();
            if e.starts_with("#unroll ") {
                depth += 1;
            } else if e == "#endunroll" {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            end += 1;
        }
        if depth != 0 {
            return Err(format!("#unroll {var} without #endunroll"));
        }
        let pattern = format!("{{{var}}}");
        for v in 0..n {
            let body: Vec<String> = lines[i + 1..end].iter().map(|l| l.replace(&pattern, &format!("{v}u"))).collect();
            let refs: Vec<&str> = body.iter().map(String::as_str).collect();
            expand(&refs, spec, out)?;
        }
        i = end + 1;
    }
    Ok(())
}

/// An `#unroll` count: a number (`u` suffix allowed, as an enclosing block substitutes), a
/// constant of `spec`, or `A>>B` of those, for a block whose count halves with an enclosing
/// block's variable.
fn unroll_count(count: &str, spec: &Spec) -> Option<u32> {
    let term = |t: &str| t.strip_suffix('u').unwrap_or(t).parse::<u32>().ok().or_else(|| spec.get(t));
    match count.split_once(">>") {
        Some((a, b)) => term(a)?.checked_shr(term(b)?),
        None => term(count),
    }
}

fn resolve_ifs(src: &str, spec: &Spec) -> Result<String, String> {
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
    fn unrolls_nested_blocks_with_constant_counts() {
        let spec = Spec::new().with("N", 2);
        let src = "#unroll i N\n#unroll j 2\na[{i} * 2u + {j}] = {i};\n#endunroll\n#endunroll\nz\n";
        let out = preprocess(src, &spec).unwrap();
        let kept: Vec<&str> = out.lines().collect();
        assert_eq!(
            kept,
            ["a[0u * 2u + 0u] = 0u;", "a[0u * 2u + 1u] = 0u;", "a[1u * 2u + 0u] = 1u;", "a[1u * 2u + 1u] = 1u;", "z"]
        );
        assert!(preprocess("#unroll i M\n#endunroll\n", &spec).unwrap_err().contains("unknown count M"));
        let halving = "#unroll l N\n#unroll i 4>>{l}\nv{l}{i}\n#endunroll\n#endunroll\n";
        let out = preprocess(halving, &spec).unwrap();
        assert_eq!(out.lines().collect::<Vec<_>>(), ["v0u0u", "v0u1u", "v0u2u", "v0u3u", "v1u0u", "v1u1u"]);
        assert!(preprocess("#unroll i 4>>M\n#endunroll\n", &spec).unwrap_err().contains("unknown count 4>>M"));
        assert!(preprocess("#unroll i 2\nx\n", &spec).is_err());
        assert!(preprocess("#endunroll\n", &spec).is_err());
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
