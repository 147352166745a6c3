;; Imports a wasi_snapshot_preview1 function the host does not have, and
;; fd_write with the wrong signature.
(module
  (import "wasi_snapshot_preview1" "open_the_pod_bay_doors" (func))
  (import "wasi_snapshot_preview1" "fd_write" (func (param i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "segedge_abi_version") (result i32) (i32.const 1))
  (func (export "segedge_input_ptr") (result i32) (i32.const 1024))
  (func (export "segedge_input_cap") (result i32) (i32.const 4096))
  (func (export "segedge_output_ptr") (result i32) (i32.const 8192))
  (func (export "segedge_eval") (param i32) (result i32) (i32.const 0)))
