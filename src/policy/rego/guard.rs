//! Builtin errors on the Rego VM. regorus 0.14.1's VM catches an error raised inside a rule
//! body and makes that body fail (OPA's non-strict semantics), even in its strict mode, so a
//! failing builtin could turn `not helper` true where the interpreter (strict) fails the whole
//! evaluation. Every builtin a VM program calls is therefore replaced by a guard that calls the
//! real builtin in strict mode and, when it fails, marks the current thread; the caller then
//! evaluates the request again on the interpreter, whose strict answer (an error: deny) counts.
//!
//! Builtins are plain function pointers, so a guard cannot carry the builtin it wraps: each of
//! [`SLOTS`] monomorphised guards reads its real builtin from a process-wide slot, one slot per
//! builtin name (regorus's table maps a name to one function for the life of the process).

use std::cell::Cell;
use std::sync::{Mutex, OnceLock};

use regorus::rvm::Program;
use regorus::unstable::{Expr, Ref, Span};
use regorus::Value;

type Builtin = fn(&Span, &[Ref<Expr>], &[Value], bool) -> anyhow::Result<Value>;

/// Distinct builtins the guarded programs of one process may call (regorus has ~200).
const SLOTS: usize = 256;

static REAL: [OnceLock<Builtin>; SLOTS] = [const { OnceLock::new() }; SLOTS];
static NAMES: Mutex<Vec<String>> = Mutex::new(Vec::new());

thread_local! {
    static FAILED: Cell<bool> = const { Cell::new(false) };
}

fn guarded<const I: usize>(
    span: &Span,
    params: &[Ref<Expr>],
    args: &[Value],
    _strict: bool,
) -> anyhow::Result<Value> {
    let result = match REAL[I].get() {
        // Strict whatever the VM asks: a builtin must not answer undefined where the
        // interpreter would have failed.
        Some(real) => real(span, params, args, true),
        None => Err(anyhow::anyhow!("internal error: builtin slot {I} is empty")),
    };
    if result.is_err() {
        FAILED.with(|f| f.set(true));
    }
    result
}

seq_macro::seq!(N in 0..256 {
    static GUARDS: [Builtin; SLOTS] = [#(guarded::<N>,)*];
});

fn slot(name: &str, real: Builtin) -> Result<usize, String> {
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = names.iter().position(|n| n == name) {
        return Ok(i);
    }
    let i = names.len();
    if i == SLOTS {
        return Err(format!("more than {SLOTS} distinct builtins"));
    }
    // A slot is filled once, before its name is published: a guard never sees it empty.
    let _ = REAL[i].set(real);
    names.push(name.to_string());
    Ok(i)
}

/// Route every builtin call of `program` through a guard.
pub fn install(program: &mut Program) -> Result<(), String> {
    if program.resolved_builtins.len() != program.builtin_info_table.len() {
        program
            .initialize_resolved_builtins()
            .map_err(|e| e.to_string())?;
    }
    for (info, resolved) in program
        .builtin_info_table
        .iter()
        .zip(program.resolved_builtins.iter_mut())
    {
        resolved.0 = GUARDS[slot(&info.name, resolved.0)?];
    }
    Ok(())
}

/// Run `f` and say whether a guarded builtin failed on this thread meanwhile.
pub fn watch<T>(f: impl FnOnce() -> T) -> (T, bool) {
    FAILED.with(|flag| flag.set(false));
    let out = f();
    (out, FAILED.with(|flag| flag.replace(false)))
}
