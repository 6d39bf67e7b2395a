//! End-to-end tests: the real daemons, in-process, against real etcd, Redis and databases
//! started by `scripts/test`. One test binary (one link step); topics are modules.

mod alarms;
mod backends;
mod jobs;
mod lock;
mod pipeline;
mod rpc;
mod stop;
