//! Starting a shell job's process: one `clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD)` on a stack
//! the calling thread keeps for all its spawns, then `execve`.
//!
//! Why not std's `Command` (through tokio's): at a thousand runs a second, starting processes
//! was a quarter of the daemons' CPU, and most of that was not the `clone` itself but what came
//! with it: glibc's `posix_spawn` maps a fresh stack for every child and unmaps it after (the
//! unmap of a many-threaded process interrupts every other core to flush its TLB), asks the
//! descriptor limit twice per redirection, and tokio opens a pidfd for each child with another
//! system call. Here the stack is mapped once per thread, the pidfd comes with the `clone`, and
//! the child gets its stdio by three `dup2`s of descriptors the caller already has. README ›
//! Benchmark has the figures.
//!
//! The child shares this process's memory until it calls `execve` (this thread is suspended
//! meanwhile, as with `vfork`), so it runs only system calls on data prepared beforehand: no
//! allocation, no lock, no glibc wrapper that would act on the whole process (glibc's `setuid`
//! signals every thread of the parent, hence the raw system calls for the credentials).
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
    /// An error means no process is left behind.
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
        let args = ChildArgs {
            plan: &plan,
            stdio: [raw(0, stdin), raw(1, stdout), raw(2, stderr)],
            errno: AtomicI32::new(0),
        };
        // The child is watched on this runtime's reactor: refused before it exists without one.
        tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        // Whether this process was dumpable before any child changed user: read once, as a
        // concurrent spawn's child may have cleared it for a moment.
        static DUMPABLE: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
        let dumpable = plan
            .user
            .is_some()
            .then(|| *DUMPABLE.get_or_init(is_dumpable));
        let cloned = STACK.with(|stack| -> io::Result<(i32, OwnedFd)> {
            let stack = stack
                .as_ref()
                .map_err(|e| io::Error::new(e.kind(), e.to_string()))?;
            clone_vfork(stack, &args)
        });
        // The child's change of user made the memory it shares with this process undumpable
        // (the kernel's rule for a process whose credentials change): this process's again.
        if let Some(Some(true)) = dumpable {
            set_dumpable();
        }
        let (pid, pidfd) = cloned?;
        let errno = args.errno.load(Ordering::Acquire);
        if errno != 0 {
            // The child has exited (127) without reaching the program: reap it here.
            let _ = reap(pid, 0);
            return Err(io::Error::from_raw_os_error(errno));
        }
        // SAFETY: the pidfd is owned by the `AsyncFd` and neither replaced nor closed under it.
        let pidfd = match unsafe {
            AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE)
        } {
            Ok(pidfd) => pidfd,
            Err(e) => {
                // A process nobody could watch: stopped, so that an error leaves none.
                // SAFETY: plain system calls on our own child, not yet reaped.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
                let _ = reap(pid, 0);
                return Err(e.into());
            }
        };
        Ok(Child {
            pid,
            pidfd: Some(pidfd),
            status: None,
        })
    }
}

/// A started process. Dropped before it was waited for, it is reaped in the background.
#[derive(Debug)]
pub struct Child {
    pid: i32,
    /// Readable once the process has exited; `None` once it was reaped.
    pidfd: Option<AsyncFd<OwnedFd>>,
    status: Option<ExitStatus>,
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
                }
                None => ready.clear_ready(),
            }
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.status.is_some() || matches!(reap(self.pid, libc::WNOHANG), Ok(Some(_))) {
            return;
        }
        // A task of its own, not a `Child`: a runtime shutting down drops a new task unrun,
        // and that drop must not spawn again. Without a runtime (never in the daemons) the
        // process stays a zombie until this one exits.
        let (pid, Some(pidfd)) = (self.pid, self.pidfd.take()) else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = pidfd.readable().await;
                let _ = reap(pid, 0);
            });
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

/// What the child reads (through a pointer: it shares this memory) and where it writes the
/// `errno` of the step that failed.
struct ChildArgs<'a> {
    plan: &'a Plan,
    stdio: [RawFd; 3],
    errno: AtomicI32,
}

/// A stack for children, mapped once per thread, with a guard page below it.
struct Stack {
    base: *mut libc::c_void,
    len: usize,
}

impl Stack {
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
        // SAFETY: the mapping is this value's own, and no child runs on it: a child that has
        // not reached `execve` still suspends the thread whose stack this is.
        unsafe {
            libc::munmap(self.base, self.len);
        }
    }
}

thread_local! {
    static STACK: io::Result<Stack> = Stack::map();
}

/// Clones a child that runs [`child_main`] on `stack` and returns its pid and pidfd once it has
/// called `execve` or exited.
fn clone_vfork(stack: &Stack, args: &ChildArgs<'_>) -> io::Result<(i32, OwnedFd)> {
    // Every signal but SIGCHLD is blocked around the `clone`. SIGCHLD cannot reach the child
    // before its `execve` (it has no children, and nobody signals a process group with it), and
    // while this thread blocks it, an earlier job's exit is not ignored but queued to the
    // process, which wakes another of its threads for nothing: at 1,000 runs a second, about
    // 800 wake-ups of the idle threads a second.
    let blocked: u64 = !(1u64 << (libc::SIGCHLD - 1));
    let mut before: u64 = 0;
    let mut pidfd: libc::c_int = -1;
    // SAFETY: every signal that could reach the child is blocked around the `clone` (no handler
    // of this process may run on the child's stack); the child only reads `args`, which
    // outlives it because `CLONE_VFORK` suspends this thread until the child has called
    // `execve` or exited; the stack is this thread's and nothing else runs on it meanwhile.
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
            stack.top(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD,
            args as *const ChildArgs<'_> as *mut libc::c_void,
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
extern "C" fn child_main(args: *mut libc::c_void) -> libc::c_int {
    // SAFETY: see `clone_vfork`; every call below is a system call (or glibc's thin wrapper of
    // one) on data the parent prepared, and the child never returns into the parent's frames.
    unsafe {
        let args = &*(args as *const ChildArgs<'_>);
        let plan = args.plan;
        let fail = |errno: libc::c_int| -> ! {
            args.errno.store(errno.max(1), Ordering::Release);
            libc::_exit(127)
        };
        let errno = || *libc::__errno_location();
        // A handler of this process must not run in the child (it shares the memory), and the
        // job should not inherit what the executor ignores: every action back to its default.
        // The raw call, as glibc's wrapper refuses its own signals (32, 33). The kernel's
        // `struct sigaction`, all zeros: `SIG_DFL`, no flags, empty mask.
        let default = [0u64; 4];
        for signal in 1..libc::SIGRTMAX() + 1 {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    signal as libc::c_long,
                    default.as_ptr(),
                    std::ptr::null_mut::<u64>(),
                    8usize,
                );
            }
        }
        let none: u64 = 0;
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &none as *const u64,
            std::ptr::null_mut::<u64>(),
            8usize,
        );
        if libc::setpgid(0, 0) != 0 {
            fail(errno());
        }
        for (target, &source) in args.stdio.iter().enumerate() {
            if libc::dup2(source, target as libc::c_int) == -1 {
                fail(errno());
            }
        }
        if let Some(dir) = &plan.cwd {
            if libc::chdir(dir.as_ptr()) != 0 {
                fail(errno());
            }
        }
        if let Some((uid, gid)) = plan.user {
            // Raw calls: glibc's wrappers would change the credentials of the parent's threads too.
            if libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) != 0
                && errno() != libc::EPERM
            {
                fail(errno());
            }
            if libc::syscall(libc::SYS_setgid, gid as libc::c_long) != 0
                || libc::syscall(libc::SYS_setuid, uid as libc::c_long) != 0
            {
                fail(errno());
            }
        }
        // As `execvp`: try each path; report a permission error over "not found" if one was met.
        // (Unlike `execvp`, a file without `#!` is not handed to `/bin/sh`: an error.)
        let mut error = libc::ENOENT;
        for path in &plan.paths {
            libc::execve(path.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr());
            match errno() {
                libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
                libc::EACCES => error = libc::EACCES,
                other => fail(other),
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
        let null = dev_null();
        let missing = Command::new("/nonexistent/gocron-no-such-program")
            .spawn(null.as_fd(), null.as_fd(), null.as_fd())
            .unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        let not_in_path = Command::new("gocron-no-such-program")
            .env("PATH", "/usr/bin:/bin")
            .spawn(null.as_fd(), null.as_fd(), null.as_fd())
            .unwrap_err();
        assert_eq!(not_in_path.kind(), io::ErrorKind::NotFound);
        let mut in_missing_dir = Command::new("/bin/sh");
        in_missing_dir.current_dir("/nonexistent/gocron-dir");
        let error = in_missing_dir
            .spawn(null.as_fd(), null.as_fd(), null.as_fd())
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
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
