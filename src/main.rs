fn main() -> std::process::ExitCode {
    pushlite::cli::main()
}
