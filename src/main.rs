// jemalloc returns what a burst freed (a reconnect storm, a frozen Redis) to the system within
// seconds, where glibc's malloc keeps it; its settings are in .cargo/config.toml (see README,
// "Chaos soak").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    pushlite::cli::main()
}
