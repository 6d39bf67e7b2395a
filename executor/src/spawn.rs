//! Starting a shell job's process: one `clone(CLONE_VM | CLONE_PIDFD)` on a stack kept for
//! the next children, then `execve`.
//!
//! Why not std's `Command` (through tokio's): at a thousand runs a second, starting processes
//! was a quarter of the daemons' CPU, and most of that was not the `clone` itself but what came
//! with it: glibc's `posix_spawn` maps a fresh stack for every child and unmaps it after (the
//! unmap of a many-threaded process interrupts every other core to flush its TLB), asks the
//! descriptor limit twice per redirection, suspends the thread until the child has called
//! `execve` (a switch to the child and one back, per process), and tokio opens a pidfd for each
//! child with another system call. Here stacks are reused, the pidfd comes with the `clone`, the
//! child gets its stdio by three `dup3`s of descriptors the caller already has, and the calling
//! thread goes on at once. README › Benchmark has the figures.
//!
//! The child shares this process's memory until it calls `execve`, while this thread goes on,
//! so it writes nothing but its own stack and one `errno` word: it makes its system calls
//! itself (glibc's wrappers would set `errno` in this thread's memory), on data prepared
//! beforehand and kept until it has called `execve` or exited ([`Launch`]). A step that fails is
//! known once the process has ended ([`Child::start_error`]). (glibc's `clone` itself writes
//! nothing in the child since glibc 2.25; the code of the child must stay free of
//! instrumentation that would, such as coverage counters.) A child that changes user runs under
//! `CLONE_VFORK` instead (this thread suspended meanwhile): the kernel makes the shared memory
//! undumpable at that change, and this process resets it right after. So does every child on a
//! target other than x86-64, where the system calls go through glibc.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::process::ExitStatusExt as _;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicI32, Ordering};

use tokio::io::unix::AsyncFd;

/// The child's stack: what it runs before `execve` is a few system calls deep.
const STACK_BYTES: usize = 64 * 1024;

/// A program to start: its argument vector, environment and settings, all converted to C
/// strings before the `clone`.
#[derive(Debug, Default)]
pub struct Command {
    program: OsString,
    args: Vec<OsString>,
    env: BTreeMap<OsString, OsString>,
    cwd: Option<OsString>,
    user: Option<(u32, u32)>,
}

impl Command {
    /// Runs `program` (a path, or a name looked up in the child's `PATH` as `execvp` does) with
    /// an empty environment, in a process group of its own.
    pub fn new(program: impl AsRef<OsStr>) -> Command {
        Command {
            program: program.as_ref().to_owned(),
            ..Command::default()
        }
    }

    /// Adds an argument (after `argv[0]`, which is the program as given).
    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Command {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Sets an environment variable; a later value for the same name replaces the earlier.
    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Command {
        self.env
            .insert(key.as_ref().to_owned(), value.as_ref().to_owned());
        self
    }

    /// Sets each of `vars`, as [`Command::env`].
    pub fn envs<K, V>(&mut self, vars: impl IntoIterator<Item = (K, V)>) -> &mut Command
    where
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        for (k, v) in vars {
            self.env(k, v);
        }
        self
    }

    /// The child's working directory.
    pub fn current_dir(&mut self, dir: impl AsRef<OsStr>) -> &mut Command {
        self.cwd = Some(dir.as_ref().to_owned());
        self
    }

    /// The child's user and group (it then has no supplementary groups).
    pub fn user(&mut self, uid: u32, gid: u32) -> &mut Command {
        self.user = Some((uid, gid));
        self
    }

    /// Starts the program with `stdin`, `stdout` and `stderr` as its descriptors 0, 1 and 2
    /// (the same descriptor may be given twice). Signals the child starts with their default
    /// actions and none blocked. Called within a tokio runtime, whose reactor watches the child.
    /// An error means no process is left behind. A program that cannot be started (not found,
    /// a missing directory) is known once its process has ended: see [`Child::start_error`].
    pub fn spawn(
        &self,
        stdin: BorrowedFd<'_>,
        stdout: BorrowedFd<'_>,
        stderr: BorrowedFd<'_>,
    ) -> io::Result<Child> {
        let plan = Plan::new(self)?;
        // A source among 0..=2 could be overwritten by an earlier `dup2` in the child.
        let lifted: Vec<Option<OwnedFd>> = [stdin, stdout, stderr]
            .into_iter()
            .map(|fd| {
                (fd.as_raw_fd() <= 2)
                    .then(|| fd.try_clone_to_owned())
                    .transpose()
            })
            .collect::<io::Result<_>>()?;
        let raw = |i: usize, fd: BorrowedFd<'_>| {
            lifted[i]
                .as_ref()
                .map_or(fd.as_raw_fd(), |owned| owned.as_raw_fd())
        };
        // The child is watched on this runtime's reactor: refused before it exists without one.
        tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        // A change of user needs this thread suspended until `execve` (see below), and so does
        // a child that could only make its system calls through glibc (which sets `errno` in
        // the memory of this thread).
        let changes_user = plan.user.is_some();
        let vfork = changes_user || !RAW_SYSCALLS;
        let launch = Held::new(Launch {
            stdio: [raw(0, stdin), raw(1, stdout), raw(2, stderr)],
            plan,
            errno: AtomicI32::new(0),
            last_signal: libc::SIGRTMAX(),
            stack: Stack::take()?,
        });
        // Whether this process was dumpable before any child changed user: read once, as a
        // concurrent spawn's child may have cleared it for a moment.
        static DUMPABLE: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
        let dumpable = changes_user.then(|| *DUMPABLE.get_or_init(is_dumpable));
        let cloned = clone_child(launch.get(), vfork);
        // The child has its own copy of the descriptor table (no `CLONE_FILES`).
        drop(lifted);
        // The child's change of user made the memory it shares with this process undumpable
        // (the kernel's rule for a process whose credentials change): this process's again.
        if let Some(Some(true)) = dumpable {
            set_dumpable();
        }
        let (pid, pidfd) = match cloned {
            Ok(cloned) => cloned,
            Err(e) => {
                // SAFETY: there is no child.
                unsafe { launch.release() };
                return Err(e);
            }
        };
        let mut child = Child {
            pid,
            pidfd: None,
            status: None,
            launch: Some(launch),
            start_errno: 0,
        };
        if vfork {
            // The child has called `execve` or exited: its memory is this process's again.
            child.release_launch();
        }
        // SAFETY: the pidfd is owned by the `AsyncFd` and neither replaced nor closed under it.
        match unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) } {
            Ok(pidfd) => child.pidfd = Some(pidfd),
            Err(e) => {
                // A process nobody could watch: stopped, so that an error leaves none.
                // SAFETY: plain system calls on our own child, not yet reaped.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
                if let Ok(Some(status)) = reap(pid, 0) {
                    child.status = Some(status);
                    child.release_launch();
                }
                return Err(e.into());
            }
        }
        Ok(child)
    }
}

/// A started process. Dropped before it was waited for, it is reaped in the background.
#[derive(Debug)]
pub struct Child {
    pid: i32,
    /// Readable once the process has exited; `None` once it was reaped.
    pidfd: Option<AsyncFd<OwnedFd>>,
    status: Option<ExitStatus>,
    /// What the child may still read: kept until it has called `execve` or exited.
    launch: Option<Held>,
    /// The `errno` of the step before `execve` that failed; 0 if none (or not known yet).
    start_errno: i32,
}

impl Child {
    /// The process id, until the process was reaped (then the id may be another's).
    pub fn id(&self) -> Option<u32> {
        self.status.is_none().then_some(self.pid as u32)
    }

    /// Waits for the process to exit and reaps it. Cancel-safe.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.status {
                return Ok(status);
            }
            let Some(pidfd) = &self.pidfd else {
                return Err(io::Error::other("the process was already reaped"));
            };
            let mut ready = pidfd.readable().await?;
            match reap(self.pid, libc::WNOHANG)? {
                Some(status) => {
                    self.status = Some(status);
                    self.pidfd = None;
                    self.release_launch();
                }
                None => ready.clear_ready(),
            }
        }
    }

    /// Once [`Child::wait`] has returned: why the program never started, if it did not (the
    /// process then exited with 127 before `execve` succeeded).
    pub fn start_error(&self) -> Option<io::Error> {
        (self.start_errno != 0).then(|| io::Error::from_raw_os_error(self.start_errno))
    }

    /// Frees what the child read before `execve` and keeps its `errno`; only once the child has
    /// called `execve` or exited.
    fn release_launch(&mut self) {
        if let Some(launch) = self.launch.take() {
            // SAFETY: as the caller's.
            self.start_errno = unsafe { launch.release() };
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.status.is_none() {
            if let Ok(Some(status)) = reap(self.pid, libc::WNOHANG) {
                self.status = Some(status);
            }
        }
        if self.status.is_some() {
            self.release_launch();
            return;
        }
        // A task of its own, not a `Child`: a runtime shutting down drops a new task unrun,
        // and that drop must not spawn again.
        let (pid, launch) = (self.pid, self.launch.take());
        let Some(pidfd) = self.pidfd.take() else {
            // Never registered: the spawn failed, and stopped the process. (A `Held` not
            // released is never freed: the child might still read it.)
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                // Not freed if the task is dropped unrun: the child may not have left it yet.
                runtime.spawn(async move {
                    let _ = pidfd.readable().await;
                    if let (Ok(Some(_)), Some(launch)) = (reap(pid, 0), launch) {
                        // SAFETY: the child has exited.
                        unsafe { launch.release() };
                    }
                });
            }
            Err(_) => {
                // Without a runtime (never in the daemons) the process stays a zombie until
                // this one exits, and what it may still read stays allocated.
            }
        }
    }
}

/// Whether this process may dump core and be traced (`PR_GET_DUMPABLE`); `None` if unknown.
fn is_dumpable() -> Option<bool> {
    // SAFETY: a plain system call.
    let got = unsafe { libc::prctl(libc::PR_GET_DUMPABLE) };
    (got >= 0).then_some(got == 1)
}

fn set_dumpable() {
    // SAFETY: a plain system call.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 1 as libc::c_ulong);
    }
}

/// `wait4` for `pid`: its status once it has exited (`None` under `WNOHANG` before that).
fn reap(pid: i32, flags: libc::c_int) -> io::Result<Option<ExitStatus>> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: `status` outlives the call; a null rusage is allowed.
        let got = unsafe { libc::wait4(pid, &mut status, flags, std::ptr::null_mut()) };
        match got {
            0 => return Ok(None),
            -1 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            _ => return Ok(Some(ExitStatus::from_raw(status))),
        }
    }
}

/// Everything the child needs, as C data: built before the `clone`, read-only after.
struct Plan {
    /// The paths to try, in order (one unless the program is looked up in `PATH`).
    paths: Vec<CString>,
    _argv: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    _envp: Vec<CString>,
    envp: Vec<*const libc::c_char>,
    cwd: Option<CString>,
    user: Option<(u32, u32)>,
}

fn c_string(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "nul byte found in provided data",
        )
    })
}

impl Plan {
    fn new(command: &Command) -> io::Result<Plan> {
        let program = command.program.as_bytes();
        let paths = if program.contains(&b'/') {
            vec![c_string(&command.program)?]
        } else {
            // As `execvp`: the child's `PATH`, an empty entry meaning the current directory.
            let path = command
                .env
                .get(OsStr::new("PATH"))
                .map_or(&b"/bin:/usr/bin"[..], |p| p.as_bytes());
            path.split(|&b| b == b':')
                .map(|dir| {
                    let dir = if dir.is_empty() { &b"."[..] } else { dir };
                    let mut full = dir.to_vec();
                    full.push(b'/');
                    full.extend_from_slice(program);
                    c_string(OsStr::from_bytes(&full))
                })
                .collect::<io::Result<_>>()?
        };
        let argv_strings = std::iter::once(command.program.as_os_str())
            .chain(command.args.iter().map(OsString::as_os_str))
            .map(c_string)
            .collect::<io::Result<Vec<_>>>()?;
        let env_strings = command
            .env
            .iter()
            .map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                c_string(OsStr::from_bytes(&kv))
            })
            .collect::<io::Result<Vec<_>>>()?;
        let pointers = |strings: &[CString]| {
            strings
                .iter()
                .map(|s| s.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect::<Vec<_>>()
        };
        Ok(Plan {
            paths,
            argv: pointers(&argv_strings),
            _argv: argv_strings,
            envp: pointers(&env_strings),
            _envp: env_strings,
            cwd: command.cwd.as_deref().map(c_string).transpose()?,
            user: command.user,
        })
    }
}

/// What the child reads until `execve` (it shares this memory), and where it writes the
/// `errno` of the step that failed. Boxed, so that it stays where the child finds it, and freed
/// only once the child has called `execve` or exited.
struct Launch {
    plan: Plan,
    stdio: [RawFd; 3],
    errno: AtomicI32,
    /// The highest signal number (glibc's `SIGRTMAX`), read before the clone.
    last_signal: libc::c_int,
    stack: Stack,
}

/// A [`Launch`] on the heap, where the child finds it. Freed only by [`Held::release`]: one
/// dropped otherwise is never freed (the child might still read it).
struct Held(std::ptr::NonNull<Launch>);

// SAFETY: the launch is this value's own (its raw pointers point into its own strings); the
// child only reads it, but for the atomic `errno`.
unsafe impl Send for Held {}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held").finish_non_exhaustive()
    }
}

impl Held {
    fn new(launch: Launch) -> Held {
        Held(std::ptr::NonNull::from(Box::leak(Box::new(launch))))
    }

    fn get(&self) -> &Launch {
        // SAFETY: alive until `release`, which takes `self`; shared with the child read-only.
        unsafe { self.0.as_ref() }
    }

    /// Frees it, its stack kept for the next child, and gives the child's `errno` of the step
    /// that failed (0 if none).
    ///
    /// # Safety
    /// Only once the child has called `execve` or exited (or was never cloned).
    unsafe fn release(self) -> i32 {
        // SAFETY: from `Box::leak` in `new`, and no child refers to it any more (the caller's).
        let launch = unsafe { Box::from_raw(self.0.as_ptr()) };
        let errno = launch.errno.load(Ordering::Acquire);
        let Launch { stack, .. } = *launch;
        stack.give();
        errno
    }
}

/// A stack for children, with a guard page below it.
#[derive(Debug)]
struct Stack {
    base: *mut libc::c_void,
    len: usize,
}

// SAFETY: a private mapping owned by the value, used by one child at a time.
unsafe impl Send for Stack {}

/// Stacks of children that have called `execve` or exited, for the next ones.
static STACKS: std::sync::Mutex<Vec<Stack>> = std::sync::Mutex::new(Vec::new());

/// How many stacks are kept for reuse (more are unmapped). At a thousand runs a second, a few
/// hundred children are between their start and their reaping at a time, and a stack unmapped
/// is an interrupt of every other core (the TLB flush) plus a fresh mapping's page faults at the
/// next start. A stack kept costs the pages its child touched: one or two.
const STACKS_KEPT: usize = 1024;

impl Stack {
    /// A stack from those kept, or a new one.
    fn take() -> io::Result<Stack> {
        let kept = STACKS.lock().unwrap_or_else(|e| e.into_inner()).pop();
        kept.map_or_else(Stack::map, Ok)
    }

    /// Keeps it for the next child (no child may be running on it).
    fn give(self) {
        let mut kept = STACKS.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() < STACKS_KEPT {
            kept.push(self);
        }
    }

    fn map() -> io::Result<Stack> {
        // SAFETY: plain system calls on a fresh anonymous mapping that nothing else refers to.
        unsafe {
            let page = libc::sysconf(libc::_SC_PAGESIZE).max(4096) as usize;
            let len = STACK_BYTES + page;
            let base = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            );
            if base == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            if libc::mprotect(base, page, libc::PROT_NONE) != 0 {
                let e = io::Error::last_os_error();
                libc::munmap(base, len);
                return Err(e);
            }
            Ok(Stack { base, len })
        }
    }

    /// The top of the stack (it grows down), 16-byte aligned.
    fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the end of the mapping, which `clone` takes as the initial stack pointer.
        let end = unsafe { self.base.cast::<u8>().add(self.len) };
        end.map_addr(|a| a & !15).cast()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping is this value's own, and no child runs on it (see `Launch`).
        unsafe {
            libc::munmap(self.base, self.len);
        }
    }
}

/// Whether the child makes its system calls itself. It shares the memory of this thread,
/// including glibc's `errno`, which a wrapper's failure would write while this thread goes on.
const RAW_SYSCALLS: bool = cfg!(all(target_arch = "x86_64", target_pointer_width = "64"));

/// A system call with up to four arguments: its result, or `-errno`. Writes no memory.
///
/// # Safety
/// As the system call `number` itself.
#[cfg(all(target_arch = "x86_64", target_pointer_width = "64"))]
unsafe fn sys(number: libc::c_long, args: [usize; 4]) -> isize {
    let result: isize;
    // SAFETY: the x86-64 Linux system-call convention; the kernel clobbers rcx and r11 only.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") number as isize => result,
            in("rdi") args[0],
            in("rsi") args[1],
            in("rdx") args[2],
            in("r10") args[3],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    result
}

/// A system call through glibc, which sets `errno` (so the child runs under `CLONE_VFORK`).
///
/// # Safety
/// As the system call `number` itself.
#[cfg(not(all(target_arch = "x86_64", target_pointer_width = "64")))]
unsafe fn sys(number: libc::c_long, args: [usize; 4]) -> isize {
    // SAFETY: as the caller's.
    unsafe {
        match libc::syscall(number, args[0], args[1], args[2], args[3]) {
            -1 => -(*libc::__errno_location() as isize),
            result => result as isize,
        }
    }
}

/// Whether this process has a handler for SIGCHLD (its action is neither the default nor to
/// ignore it).
fn handles_sigchld() -> bool {
    // The kernel's `struct sigaction`: the handler first.
    let mut action = [0u64; 4];
    // SAFETY: a query (no new action) into a buffer of the kernel's size.
    let got = unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            libc::SIGCHLD as libc::c_long,
            std::ptr::null::<u64>(),
            action.as_mut_ptr(),
            8usize,
        )
    };
    got != 0 || (action[0] as usize != libc::SIG_DFL && action[0] as usize != libc::SIG_IGN)
}

/// Clones a child that runs [`child_main`] on the launch's stack and returns its pid and pidfd:
/// under `CLONE_VFORK` once it has called `execve` or exited, else at once (this thread goes on
/// while the child prepares, and the launch must outlive its `execve`).
fn clone_child(launch: &Launch, vfork: bool) -> io::Result<(i32, OwnedFd)> {
    // Every signal is blocked around the `clone`: no handler of this process may run on the
    // child's stack before the child has set them all back to their defaults. SIGCHLD too if
    // this process handles it; if not (its action is the default, to ignore it, or ignore), it
    // is left open: while this thread blocked it, an earlier job's exit would be queued to the
    // process instead of ignored, and wake another of its threads for nothing (README ›
    // Benchmark: about 1,700 wake-ups in 10 s at 1,000 runs a second, even with the block
    // lasting the `clone` alone). Only a `kill` naming the child could send it SIGCHLD.
    let blocked: u64 = if handles_sigchld() {
        !0
    } else {
        !(1u64 << (libc::SIGCHLD - 1))
    };
    let mut before: u64 = 0;
    let mut pidfd: libc::c_int = -1;
    let mut flags = libc::CLONE_VM | libc::CLONE_PIDFD | libc::SIGCHLD;
    if vfork {
        flags |= libc::CLONE_VFORK;
    }
    // SAFETY: every signal with a handler is blocked around the `clone` (no handler of this
    // process may run on the child's stack before it resets them); the child reads the launch
    // (and writes its atomic `errno`), which the caller keeps until the child has called
    // `execve` or exited, and runs on the launch's own stack. No `CLONE_FILES`: the child's
    // `dup3`s act on its own copy of the descriptor table.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &blocked as *const u64,
            &mut before as *mut u64,
            8usize,
        );
        let pid = libc::clone(
            child_main,
            launch.stack.top(),
            flags,
            launch as *const Launch as *mut libc::c_void,
            &mut pidfd as *mut libc::c_int,
        );
        let cloned = if pid == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok((pid, OwnedFd::from_raw_fd(pidfd)))
        };
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &before as *const u64,
            std::ptr::null_mut::<u64>(),
            8usize,
        );
        cloned
    }
}

/// The child, until `execve`: default signal actions, nothing blocked, its own process group,
/// its stdio, its directory, its user, then the program. A failed step's `errno` goes to the
/// parent and the child exits with 127.
extern "C" fn child_main(launch: *mut libc::c_void) -> libc::c_int {
    // SAFETY: see `clone_child`; every call below is a system call through `sys` on data the
    // parent prepared (nothing else of the parent's memory is written), and the child never
    // returns into the parent's frames.
    unsafe {
        let launch = &*(launch as *const Launch);
        let plan = &launch.plan;
        let fail = |errno: isize| -> ! {
            launch.errno.store((errno as i32).max(1), Ordering::Release);
            loop {
                sys(libc::SYS_exit_group, [127, 0, 0, 0]);
            }
        };
        let check = |result: isize| {
            if result < 0 {
                fail(-result);
            }
        };
        // A handler of this process must not run in the child (it shares the memory), and the
        // job should not inherit what the executor ignores: every action back to its default.
        // The kernel's `struct sigaction`, all zeros: `SIG_DFL`, no flags, empty mask.
        let default = [0u64; 4];
        for signal in 1..launch.last_signal + 1 {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                let act = default.as_ptr() as usize;
                sys(libc::SYS_rt_sigaction, [signal as usize, act, 0, 8]);
            }
        }
        let none: u64 = 0;
        let none = &none as *const u64 as usize;
        sys(
            libc::SYS_rt_sigprocmask,
            [libc::SIG_SETMASK as usize, none, 0, 8],
        );
        check(sys(libc::SYS_setpgid, [0, 0, 0, 0]));
        for (target, &source) in launch.stdio.iter().enumerate() {
            // `dup3` is `dup2` for two different descriptors (the caller lifted 0..=2).
            check(sys(libc::SYS_dup3, [source as usize, target, 0, 0]));
        }
        if let Some(dir) = &plan.cwd {
            check(sys(libc::SYS_chdir, [dir.as_ptr() as usize, 0, 0, 0]));
        }
        if let Some((uid, gid)) = plan.user {
            // Raw calls: glibc's wrappers would change the credentials of the parent's threads too.
            let groups = sys(libc::SYS_setgroups, [0, 0, 0, 0]);
            if groups < 0 && groups != -(libc::EPERM as isize) {
                fail(-groups);
            }
            check(sys(libc::SYS_setgid, [gid as usize, 0, 0, 0]));
            check(sys(libc::SYS_setuid, [uid as usize, 0, 0, 0]));
        }
        // As `execvp`: try each path; report a permission error over "not found" if one was met.
        // (Unlike `execvp`, a file without `#!` is not handed to `/bin/sh`: an error.)
        let mut error = libc::ENOENT as isize;
        let (argv, envp) = (plan.argv.as_ptr() as usize, plan.envp.as_ptr() as usize);
        for path in &plan.paths {
            let errno = -sys(libc::SYS_execve, [path.as_ptr() as usize, argv, envp, 0]);
            match errno as i32 {
                libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
                libc::EACCES => error = errno,
                _ => fail(errno),
            }
        }
        fail(error)
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd as _;

    use super::*;

    fn dev_null() -> std::fs::File {
        std::fs::File::open("/dev/null").unwrap()
    }

    /// Runs `command` to its end with stdin from `/dev/null` and stdout and stderr on one pipe:
    /// its pid, its status and its output. The pid is no longer given once it was reaped.
    async fn run(command: &Command) -> (u32, ExitStatus, String) {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let null = dev_null();
        let mut child = command
            .spawn(null.as_fd(), write.as_fd(), write.as_fd())
            .unwrap();
        drop(write);
        let pid = child.id().expect("a started child has its pid");
        let status = child.wait().await.unwrap();
        assert_eq!(child.id(), None);
        let output = std::io::read_to_string(std::fs::File::from(read)).unwrap();
        (pid, status, output)
    }

    #[tokio::test]
    async fn runs_the_program_with_its_environment_only() {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg("echo \"$A $B\" >&2; pwd; exit 3")
            .env("PATH", "/usr/bin:/bin")
            .env("A", "one")
            .env("A", "two")
            .env("B", "three")
            .current_dir("/tmp");
        let (_, status, output) = run(&command).await;
        assert_eq!(status.code(), Some(3));
        assert_eq!(output, "two three\n/tmp\n");
    }

    #[tokio::test]
    async fn a_missing_program_or_directory_is_an_error() {
        let missing = start_error(&Command::new("/nonexistent/gocron-no-such-program")).await;
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        let mut not_in_path = Command::new("gocron-no-such-program");
        not_in_path.env("PATH", "/usr/bin:/bin");
        assert_eq!(
            start_error(&not_in_path).await.kind(),
            io::ErrorKind::NotFound
        );
        let mut in_missing_dir = Command::new("/bin/sh");
        in_missing_dir.current_dir("/nonexistent/gocron-dir");
        assert_eq!(
            start_error(&in_missing_dir).await.kind(),
            io::ErrorKind::NotFound
        );
    }

    /// Why `command` could not start: known once its process has ended, also under
    /// `CLONE_VFORK` (`spawn` itself succeeds).
    async fn start_error(command: &Command) -> io::Error {
        let null = dev_null();
        match command.spawn(null.as_fd(), null.as_fd(), null.as_fd()) {
            Err(e) => panic!("spawn reported the start failure itself: {e}"),
            Ok(mut child) => {
                let status = child.wait().await.unwrap();
                assert_eq!(status.code(), Some(127));
                child.start_error().expect("the program did not start")
            }
        }
    }

    #[tokio::test]
    async fn many_children_started_at_once_each_run_their_own_program() {
        // The children prepare while this thread goes on: each must read its own launch, and
        // a launch must outlive its child's `execve` though its command is dropped at once.
        let mut children = Vec::new();
        let mut pipes = Vec::new();
        let null = dev_null();
        for i in 0..64 {
            let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
            let mut command = Command::new("/bin/sh");
            command.arg("-c").arg(format!("echo {i}; exit {}", i % 7));
            let child = command
                .spawn(null.as_fd(), write.as_fd(), write.as_fd())
                .unwrap();
            drop(command);
            children.push(child);
            pipes.push(read);
        }
        for (i, (mut child, read)) in children.into_iter().zip(pipes).enumerate() {
            let status = child.wait().await.unwrap();
            assert_eq!(status.code(), Some(i as i32 % 7));
            assert!(child.start_error().is_none());
            let output = std::io::read_to_string(std::fs::File::from(read)).unwrap();
            assert_eq!(output, format!("{i}\n"));
        }
    }

    #[tokio::test]
    async fn the_child_leads_its_own_group_with_default_signals() {
        // This process ignores SIGINT; the job must not.
        // SAFETY: setting a signal's action to ignored.
        unsafe {
            libc::signal(libc::SIGINT, libc::SIG_IGN);
        }
        let (pid, status, output) = run(Command::new("/bin/sh")
            .arg("-c")
            .arg("cut -d' ' -f5 /proc/$$/stat; exec grep -E '^(SigIgn|SigBlk)' /proc/self/status")
            .env("PATH", "/usr/bin:/bin"))
        .await;
        assert!(status.success());
        // SAFETY: restoring the default action.
        unsafe {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
        }
        let mut lines = output.lines();
        assert_eq!(lines.next().map(str::trim), Some(pid.to_string().as_str()));
        for line in lines {
            let mask = line.split_whitespace().nth(1).unwrap();
            assert!(
                mask.bytes().all(|b| b == b'0'),
                "the job inherited a signal mask or ignored signals: {line}"
            );
        }
    }

    #[test]
    fn sigchld_is_left_open_only_while_this_process_has_no_handler_for_it() {
        extern "C" fn nothing(_: libc::c_int) {}
        assert!(!handles_sigchld());
        // SAFETY: a handler that does nothing, restarting interrupted calls; then the default.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = nothing as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigaction(libc::SIGCHLD, &action, std::ptr::null_mut());
            let handled = handles_sigchld();
            libc::signal(libc::SIGCHLD, libc::SIG_DFL);
            assert!(handled);
        }
        assert!(!handles_sigchld());
    }

    #[tokio::test]
    async fn a_child_of_another_user_leaves_this_process_dumpable() {
        // SAFETY: a plain system call.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: switching users needs root");
            return;
        }
        assert_eq!(is_dumpable(), Some(true));
        let (_, status, output) = run(Command::new("/bin/sh")
            .arg("-c")
            .arg("id -u; id -G")
            .env("PATH", "/usr/bin:/bin")
            .user(65534, 65534))
        .await;
        assert!(status.success());
        assert_eq!(output, "65534\n65534\n");
        assert_eq!(
            is_dumpable(),
            Some(true),
            "the executor lost its dumpable flag"
        );
    }

    #[tokio::test]
    async fn a_dropped_child_is_reaped_in_the_background() {
        let null = dev_null();
        let child = Command::new("/bin/true")
            .spawn(null.as_fd(), null.as_fd(), null.as_fd())
            .unwrap();
        let pid = child.id().unwrap() as i32;
        drop(child);
        // Reaped by the task the drop left (or by the drop itself): no zombie stays behind.
        let gone = async {
            while std::fs::metadata(format!("/proc/{pid}")).is_ok() {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), gone)
            .await
            .expect("the dropped child stayed a zombie");
    }
}
