;; A well-behaved rule module: output word 0 (membership) = the first 8 input
;; bytes, word 1 (errors) = 0, slot 0 = input length, slot 1 = -1. Output: 24 bytes.
(module
  (memory (export "memory") 1)
  (func (export "segedge_abi_version") (result i32) (i32.const 1))
  (func (export "segedge_input_ptr") (result i32) (i32.const 1024))
  (func (export "segedge_input_cap") (result i32) (i32.const 4096))
  (func (export "segedge_output_ptr") (result i32) (i32.const 8192))
  (func (export "segedge_eval") (param $len i32) (result i32)
    (i64.store (i32.const 8192) (i64.load (i32.const 1024)))
    (i64.store (i32.const 8200) (i64.const 0))
    (i32.store (i32.const 8208) (local.get $len))
    (i32.store (i32.const 8212) (i32.const -1))
    (i32.const 0)))
