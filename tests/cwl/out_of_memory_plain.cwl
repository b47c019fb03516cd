cwlVersion: v1.2
class: CommandLineTool
$namespaces: {arv: "http://arvados.org/cwl#"}
doc: "Holds a 100 MB string in bash (about 200 MB of RAM), without a hint: for --doubleMem."
requirements:
  ResourceRequirement: {ramMin: 64}
hints: {}
inputs: []
baseCommand: [bash, -c, "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo ${#x}"]
stdout: length.txt
outputs:
  length: stdout
