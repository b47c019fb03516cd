cwlVersion: v1.2
class: CommandLineTool
$namespaces: {arv: "http://arvados.org/cwl#"}
doc: "Holds a 60 MB string in bash, which 64 MiB of RAM cannot hold."
requirements:
  ResourceRequirement: {ramMin: 64}
hints:
  arv:OutOfMemoryRetry: {memoryRetryMultiplier: 4}
inputs: []
baseCommand: [bash, -c, "x=$(head -c 60000000 /dev/zero | tr '\\0' a); echo ${#x}"]
stdout: length.txt
outputs:
  length: stdout
