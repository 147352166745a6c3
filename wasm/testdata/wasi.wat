;; A hand-written module that uses the WASI the host allows: it writes
;; "hello" to stdout (discarded by the host) and asks for 8 random bytes,
;; which the host fills with zeros. Output word 0 = the random bytes,
;; slot 0 = fd_write's errno, slot 1 = random_get's errno.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "\10\00\00\00\05\00\00\00")
  (data (i32.const 16) "hello")
  (func (export "segedge_abi_version") (result i32) (i32.const 1))
  (func (export "segedge_input_ptr") (result i32) (i32.const 1024))
  (func (export "segedge_input_cap") (result i32) (i32.const 4096))
  (func (export "segedge_output_ptr") (result i32) (i32.const 8192))
  (func (export "segedge_eval") (param i32) (result i32)
    (i32.store (i32.const 8208) (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 32)))
    (i64.store (i32.const 8192) (i64.const -1))
    (i64.store (i32.const 8200) (i64.const 0))
    (i32.store (i32.const 8212) (call $random_get (i32.const 8192) (i32.const 8)))
    (i32.const 0)))
