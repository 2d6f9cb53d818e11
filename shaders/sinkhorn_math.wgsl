// ---- sinkhorn_math.wgsl: the Sinkhorn-Knopp projection of one token's N x N matrix ----
// Needs: N, NN = N * N. Matrices are row-major (row j, column i) in private arrays.
// Normalisation step s (0-based) divides columns when s is even and rows when s is odd:
// after the softmax come `cols`, then iters - 1 pairs of (rows, cols), 2 * iters - 1 in all.

fn sk_softmax(l: ptr<function, array<f32, NN>>, eps: f32) -> array<f32, NN> {
    var p: array<f32, NN>;
    for (var j = 0u; j < N; j++) {
        var mx = (*l)[j * N];
        for (var i = 1u; i < N; i++) {
            mx = max(mx, (*l)[j * N + i]);
        }
        var s = 0.0;
        for (var i = 0u; i < N; i++) {
            p[j * N + i] = exp((*l)[j * N + i] - mx);
            s += p[j * N + i];
        }
        for (var i = 0u; i < N; i++) {
            p[j * N + i] = p[j * N + i] / s + eps;
        }
    }
    return p;
}

// Index of element b of line a: column a when `cols`, else row a.
fn sk_at(a: u32, b: u32, cols: bool) -> u32 {
    return select(a * N + b, b * N + a, cols);
}

// Normalises `p` in place along columns or rows; `den` receives each line's sum + eps.
fn sk_normalise(p: ptr<function, array<f32, NN>>, cols: bool, eps: f32, den: ptr<function, array<f32, N>>) {
    for (var a = 0u; a < N; a++) {
        var s = 0.0;
        for (var b = 0u; b < N; b++) {
            s += (*p)[sk_at(a, b, cols)];
        }
        (*den)[a] = s + eps;
        for (var b = 0u; b < N; b++) {
            (*p)[sk_at(a, b, cols)] = (*p)[sk_at(a, b, cols)] / (s + eps);
        }
    }
}

// The matrix after the softmax and the first `steps` normalisations.
fn sk_state(l: ptr<function, array<f32, NN>>, steps: u32, eps: f32) -> array<f32, NN> {
    var p = sk_softmax(l, eps);
    var den: array<f32, N>;
    for (var s = 0u; s < steps; s++) {
        sk_normalise(&p, (s & 1u) == 0u, eps, &den);
    }
    return p;
}

fn sk_forward(l: ptr<function, array<f32, NN>>, iters: u32, eps: f32) -> array<f32, NN> {
    return sk_state(l, 2u * iters - 1u, eps);
}

// d_logits from d_out. The forward states are recomputed for each step rather than stored:
// O(iters^2 * N^2) arithmetic, no memory traffic beyond the token's logits and gradient.
fn sk_backward(l: ptr<function, array<f32, NN>>, d_out: ptr<function, array<f32, NN>>, iters: u32, eps: f32) -> array<f32, NN> {
    var g = *d_out;
    var den: array<f32, N>;
    for (var s = 2u * iters - 1u; s > 0u; s--) {
        let cols = ((s - 1u) & 1u) == 0u;
        var q = sk_state(l, s - 1u, eps);
        sk_normalise(&q, cols, eps, &den);
        for (var a = 0u; a < N; a++) {
            var dot = 0.0;
            for (var b = 0u; b < N; b++) {
                dot += g[sk_at(a, b, cols)] * q[sk_at(a, b, cols)];
            }
            for (var b = 0u; b < N; b++) {
                g[sk_at(a, b, cols)] = (g[sk_at(a, b, cols)] - dot) / den[a];
            }
        }
    }
    // Softmax rows: S = P0 - eps.
    let p0 = sk_softmax(l, 0.0);
    var dl: array<f32, NN>;
    for (var j = 0u; j < N; j++) {
        var dot = 0.0;
        for (var i = 0u; i < N; i++) {
            dot += g[j * N + i] * p0[j * N + i];
        }
        for (var i = 0u; i < N; i++) {
            dl[j * N + i] = p0[j * N + i] * (g[j * N + i] - dot);
        }
    }
    return dl;
}
