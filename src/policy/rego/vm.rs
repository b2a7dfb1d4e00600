//! A route's `decision` compiled to regorus's Rego VM (RVM) bytecode. Each thread keeps one VM
//! per program and reuses it (a run resets the VM's registers and rule cache), so a request
//! pays neither for building a VM nor for cloning an engine. Builtins run through
//! [`super::guard`]: a failing builtin sends the request to the interpreter, whose strict
//! semantics decide.

use std::cell::RefCell;
use std::sync::Arc;

use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::program::RuleType;
use regorus::rvm::{Instruction, Program, RegoVM};
use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{CompiledPolicy, Engine, Value};

use super::guard;

/// VMs kept per thread, one per program (a configuration's routes; older configurations'
/// programs go once nothing else holds them).
const VMS_PER_THREAD: usize = 16;

/// A thread's VM for one program, with the program (whose address is the key).
type ThreadVm = (Arc<Program>, RegoVM);

thread_local! {
    static VMS: RefCell<Vec<ThreadVm>> = const { RefCell::new(Vec::new()) };
}

#[derive(Clone)]
pub struct VmProgram {
    policy: CompiledPolicy,
    program: Arc<Program>,
    /// The entry rule's name (`data.<package>.decision`) and `default` value, if any.
    entry: String,
    default: Option<Value>,
    /// The wall-clock limit of a run, as with the interpreter.
    timer: ExecutionTimerConfig,
}

/// What a VM run says.
#[derive(Debug, PartialEq)]
pub enum VmAnswer {
    Value(Value),
    /// Evaluate on the interpreter instead: a builtin failed during the run, or the answer is
    /// the entry rule's default (or undefined), which the VM also gives where a branch of an
    /// `else` chain succeeds with an undefined value and the interpreter tries the next one.
    Recheck,
}

impl VmProgram {
    pub fn compile(
        engine: &Engine,
        entry: &str,
        timer: ExecutionTimerConfig,
    ) -> Result<VmProgram, String> {
        let mut engine = engine.clone();
        let policy = engine
            .compile_with_entrypoint(&entry.into())
            .map_err(|e| e.to_string())?;
        let program =
            Compiler::compile_from_policy(&policy, &[entry]).map_err(|e| e.to_string())?;
        let mut program = Arc::unwrap_or_clone(program);
        guard::install(&mut program)?;
        let default = program
            .rule_infos
            .iter()
            .find(|r| r.name == entry)
            .and_then(|r| r.default_literal_index)
            .and_then(|i| program.literals.get(usize::from(i)).cloned());
        Ok(VmProgram {
            policy,
            program: Arc::new(program),
            entry: entry.to_string(),
            default,
            timer,
        })
    }

    /// Why the VM could answer differently from the strict interpreter on some input, beyond
    /// builtin errors and the entry rule's default (which [`VmAnswer::Recheck`] covers): the
    /// VM makes a failing arithmetic or boolean operation, and conflicting values of a rule,
    /// undefined where the interpreter fails, and ends a helper rule's `else` chain at a
    /// branch whose value is undefined where the interpreter tries the next branch.
    /// `None`: the program has none of those.
    pub fn divergence(&self) -> Option<String> {
        for i in &self.program.instructions {
            let what = match i {
                Instruction::Add { .. }
                | Instruction::Sub { .. }
                | Instruction::Mul { .. }
                | Instruction::Div { .. }
                | Instruction::Mod { .. } => "arithmetic (+ - * / %)",
                Instruction::And { .. } | Instruction::Or { .. } => "a boolean operator",
                _ => continue,
            };
            return Some(format!("it uses {what}"));
        }
        for r in &self.program.rule_infos {
            if matches!(r.rule_type, RuleType::PartialObject) {
                return Some(format!("{} is a partial object rule", r.name));
            }
            if r.name != self.entry && r.else_bodies.iter().any(|bodies| bodies.len() > 1) {
                return Some(format!("{} has an else chain", r.name));
            }
            if matches!(r.rule_type, RuleType::Complete)
                && r.definitions.len() > 1
                && !r.early_exit_on_first_success
            {
                return Some(format!(
                    "{} has {} definitions that may conflict",
                    r.name,
                    r.definitions.len()
                ));
            }
        }
        None
    }

    fn new_vm(&self) -> RegoVM {
        let mut vm = RegoVM::new_with_policy(self.policy.clone());
        vm.load_program(Arc::clone(&self.program));
        // Comparisons across types follow Rego's total order, as on the interpreter (the
        // VM's strict mode would fail them); builtin errors are caught by the guards.
        vm.set_strict_builtin_errors(false);
        // The wall-clock limit bounds evaluation, as with the interpreter.
        vm.set_max_instructions(usize::MAX);
        vm.set_execution_timer_config(Some(self.timer));
        vm
    }

    /// Evaluate on this thread's VM for the program.
    pub fn run(&self, input: Value) -> Result<VmAnswer, String> {
        VMS.with(|cell| {
            let mut vms = cell.borrow_mut();
            let at = match vms.iter().position(|(p, _)| Arc::ptr_eq(p, &self.program)) {
                Some(at) => at,
                None => {
                    // Held here and by the VM only: its configuration was replaced.
                    vms.retain(|(p, _)| Arc::strong_count(p) > 2);
                    if vms.len() == VMS_PER_THREAD {
                        vms.remove(0);
                    }
                    vms.push((Arc::clone(&self.program), self.new_vm()));
                    vms.len() - 1
                }
            };
            let vm = &mut vms[at].1;
            vm.set_input(input);
            let (result, failed) = guard::watch(|| vm.execute());
            // Drop the request's input now rather than at the next run.
            vm.set_input(Value::Undefined);
            match result {
                Err(e) => Err(e.to_string()),
                Ok(_) if failed => Ok(VmAnswer::Recheck),
                Ok(Value::Undefined) => Ok(VmAnswer::Recheck),
                Ok(v) if self.default.as_ref() == Some(&v) => Ok(VmAnswer::Recheck),
                Ok(v) => Ok(VmAnswer::Value(v)),
            }
        })
    }
}

/// VMs this thread keeps (for tests).
#[cfg(test)]
pub fn thread_vms() -> usize {
    VMS.with(|cell| cell.borrow().len())
}
